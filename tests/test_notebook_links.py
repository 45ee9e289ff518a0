"""Links between notebooks work on Colab: badge and Next link built from kpnb.config.

A relative ``[next](01_x.ipynb)`` link opens nothing on Colab, where a notebook has no
folder beside it; so every link to a notebook is the Colab URL of the one repository and
branch that `kpnb.config` names, and it points at a notebook that exists.
"""

import json
import re
from pathlib import Path

import pytest

from kpnb.config import BRANCH, REPO

FOLDER = Path(__file__).parents[1] / "notebooks"
NOTEBOOKS = sorted(FOLDER.glob("[0-9][0-9]_*.ipynb"))
COLAB = "https://colab.research.google.com/github/"
LINK = re.compile(r"\]\(([^)\s]+)\)")


def _markdown(path: Path) -> list[str]:
    cells = json.loads(path.read_text(encoding="utf-8"))["cells"]
    return ["".join(c["source"]) for c in cells if c["cell_type"] == "markdown"]


def _colab_target(url: str) -> str:
    """The notebook file a Colab URL opens, if it is built from REPO and BRANCH."""
    prefix = f"{COLAB}{REPO}/blob/{BRANCH}/notebooks/"
    assert url.startswith(prefix), f"{url} is not built from kpnb.config ({prefix}...)"
    return url[len(prefix) :]


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_badge_opens_this_notebook_on_colab(path):
    badges = [u for u in LINK.findall(_markdown(path)[0]) if u.startswith(COLAB)]
    assert len(badges) == 1, "the title cell needs exactly one Colab badge"
    assert _colab_target(badges[0]) == path.name


@pytest.mark.parametrize("path", NOTEBOOKS[:-1], ids=lambda p: p.stem)
def test_next_link_opens_the_next_notebook_on_colab(path):
    last = _markdown(path)[-1]
    assert "**Next:**" in last, "the last cell ends with a Next link"
    links = LINK.findall(last[last.index("**Next:**") :])
    assert links, "the Next line has no link"
    target = _colab_target(links[0])
    assert (FOLDER / target).is_file(), f"{target} does not exist"
    assert target == NOTEBOOKS[NOTEBOOKS.index(path) + 1].name, "Next skips a notebook"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_no_relative_notebook_links(path):
    for text in _markdown(path):
        for url in LINK.findall(text):
            if url.endswith(".ipynb"):
                assert (FOLDER / _colab_target(url)).is_file(), url
