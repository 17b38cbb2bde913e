"""Orthogonal treatments of the Pre-SVD layer (Song, Sebe, Wang, ECCV 2022).

The layer whose output feeds the covariance of an SVD meta-layer decides how well conditioned
that covariance is (the two-step model of eq. 10, ``C = (W - eta G) Y Y^T (W - eta G)^T``).
This package treats its weight, its gradient and its learning rate:

=======================  ==========================================  ==============
treatment                function                                    paper
=======================  ==========================================  ==============
spectral norm (SN)       :func:`spectral_norm`                       eq. 11
orthogonal loss (OL)     :func:`orthogonal_loss`,                    eq. 12
                         :func:`add_orthogonal_loss`
orthogonal weight (OW)   :func:`orthogonal_weight`                   eq. 13
nearest orth. gradient   :func:`nearest_orthogonal`                  eq. 14-17, A.1
optimal learning rate    :func:`optimal_learning_rate`               eq. 18-21, A.2
NOG/OLR in training      :class:`PreSVD`, :func:`presvd_param_groups` sec. 5
=======================  ==========================================  ==============

A convolution weight is always the matrix ``out_channels x (in_channels * kh * kw)``.
:mod:`svdlib.ortho.toy` holds the eq. 10 simulation used by notebook 05.
"""
from .nog import nearest_orthogonal
from .olr import eta_star, exact_optimal_learning_rate, optimal_learning_rate
from .presvd import PreSVD, PreSVDRecord, presvd_param_groups
from .weight import add_orthogonal_loss, orthogonal_loss, orthogonal_weight, spectral_norm

__all__ = [
    "spectral_norm",
    "orthogonal_loss",
    "orthogonal_weight",
    "nearest_orthogonal",
    "optimal_learning_rate",
    "PreSVD",
    # helpers
    "add_orthogonal_loss",
    "presvd_param_groups",
    "PreSVDRecord",
    "eta_star",
    "exact_optimal_learning_rate",
]
