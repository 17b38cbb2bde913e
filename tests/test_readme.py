"""The README's first Python example runs as written and its layers give the shapes it claims."""
import re
from pathlib import Path

README = (Path(__file__).resolve().parents[1] / "README.md").read_text()


def test_readme_example_runs():
    code = re.search(r"```python\n(import torch, svdlib.*?)```", README, re.S).group(1)
    namespace: dict = {}
    exec(compile(code, "README.md", "exec"), namespace)
    torch = namespace["torch"]
    assert torch.allclose(namespace["Q"] @ namespace["Q"], namespace["P"], atol=1e-10)
    out = namespace["model"](torch.randn(2, 3, 16, 16))
    assert out.shape == (2, 32 * 33 // 2)
    assert namespace["presvd"].last is not None  # the hook acted on the step
