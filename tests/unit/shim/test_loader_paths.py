"""Where a sample's original image file is: named by the user, or found on a torchvision-style dataset."""

from __future__ import annotations

from pathlib import Path

from weightslab_shim.data import _path_lookup


class FolderLike:
    """Like torchvision's ImageFolder: `samples` is a list of (path, class index)."""

    def __init__(self, paths: list[str]) -> None:
        self.samples = [(p, 0) for p in paths]


def test_paths_from_a_list_a_function_or_the_dataset() -> None:
    listed = _path_lookup(None, ["a.png", Path("b.png")])
    assert listed is not None and (listed(0), listed(1), listed(2)) == ("a.png", "b.png", None)
    called = _path_lookup(None, lambda i: f"img/{i}.jpg")
    assert called is not None and called(12) == "img/12.jpg"
    found = _path_lookup(FolderLike(["x.png", "y.png"]), None)
    assert found is not None and found(1) == "y.png" and found(-1) is None


def test_no_paths_when_none_are_known() -> None:
    assert _path_lookup([(1, 2), (3, 4)], None) is None  # a plain list dataset names no files
    assert _path_lookup(FolderLike([]), None) is None
    assert _path_lookup(type("T", (), {"samples": "not a list"})(), None) is None
