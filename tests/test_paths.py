"""The canonical path (sidecar/gate/paths.py): a table of the usual tricks, and properties over
arbitrary input (idempotent; no //, /./, /../ or escaped unreserved character survives)."""

from __future__ import annotations

import re
import string

import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from sidecar.gate.paths import InvalidPath, canonical_path

CANONICAL = [
    ("/", "/"),
    ("/v1/images/a", "/v1/images/a"),
    ("/%69nternal/secret", "/internal/secret"),
    ("/v1/%69mages/a", "/v1/images/a"),
    ("/%41%7a%30%2D%2e%5F%7E", "/Az0-._~"),
    ("/v1/./images/a", "/v1/images/a"),
    ("/v1/x/../images/a", "/v1/images/a"),
    ("/v1/x/%2e%2E/images/a", "/v1/images/a"),
    ("/v1/x/.%2e/images/./a", "/v1/images/a"),
    ("/a/b/..", "/a/"),
    ("/a/b/.", "/a/b/"),
    ("/a/..", "/"),
    ("//v1//images//a", "/v1/images/a"),
    ("/a/", "/a/"),
    ("/a//", "/a/"),
    ("/v1/images;x=1/a", "/v1/images/a"),
    ("/v1/images/a;jsessionid=1", "/v1/images/a"),
    ("/v1/images/a%3Bb", "/v1/images/a%3Bb"),
    ("/%2569nternal", "/%2569nternal"),  # double encoding: the upstream decodes once
    ("/a%3a%40%21%2a%2B%2c%3D", "/a:@!*+,="),
    ("/a%3f%23%25", "/a%3F%23%25"),
    ("/a%20b/c d", "/a b/c d"),
    ("/%E2%82%AC/é", "/€/é"),
    ("/V1/Images/A", "/V1/Images/A"),  # case is kept (the pricing file can fold it)
    ("/v1/images/a?next=/../../internal", "/v1/images/a"),
    ("/v1/images/a?q=%2F%00\\", "/v1/images/a"),
    ("/?x", "/"),
]

REFUSED = [
    ("/v1/images%2Fa", "encoded slash"),
    ("/v1/images%2fa", "encoded slash"),
    ("/v1/images%5Ca", "encoded backslash"),
    ("/v1\\images", "backslash"),
    ("/a%00b", "control"),
    ("/a%0Ab", "control"),
    ("/a%7F", "control"),
    ("/a\x00b", "control"),
    ("/a\tb", "control"),
    ("/a?\x01", "control"),
    ("v1/images", "must start with /"),
    ("", "must start with /"),
    ("*", "must start with /"),
    ("http://example.com/v1/images", "must start with /"),
    ("/..", "above the root"),
    ("/a/../..", "above the root"),
    ("/%2e%2e/internal", "above the root"),
    ("/v1/images/..;/internal", "ambiguous"),
    ("/v1/.;x/internal", "ambiguous"),
    ("/a%", "percent-escape"),
    ("/a%4", "percent-escape"),
    ("/a%zz", "percent-escape"),
    ("/a%٣٣", "percent-escape"),
    ("/a%FF", "not UTF-8"),
    ("/a%C0%AF", "not UTF-8"),  # overlong '/'
    ("/a%E2%82", "not UTF-8"),
    ("/a\udcff", "not valid UTF-8"),  # a raw byte, as aiohttp hands it over
    ("/a?\udcff", "not valid UTF-8"),
    ("/a#b", "#"),
]


@pytest.mark.parametrize(("raw", "expected"), CANONICAL)
def test_spellings_of_a_path_canonicalise_to_one_path(raw: str, expected: str) -> None:
    assert canonical_path(raw) == expected


@pytest.mark.parametrize(("raw", "problem"), REFUSED)
def test_paths_without_one_safe_reading_are_refused_naming_the_problem(
    raw: str, problem: str
) -> None:
    with pytest.raises(InvalidPath, match=re.escape(problem)):
        canonical_path(raw)


# Text rich in the characters that matter: separators, dots, escapes, parameters.
_PIECES = st.sampled_from(
    [
        *["/", "/", ".", "..", "%2e", "%2E", "%2f", "%5c", "%25", "%3B", "%3f", "%41", "%69"],
        *["%7e", "%C3%A9", "%FF", ";", ";x=1", "?", "#", "\\", "a", "B", "~", " ", "é", "%"],
        "\x00",
    ]
)
_TARGETS = st.lists(_PIECES | st.text(max_size=3), max_size=24).map("".join).map(lambda s: "/" + s)
_UNRESERVED = set(string.ascii_letters + string.digits + "-._~")


@given(_TARGETS)
@example("/a/%2e%2e/b")
@example("/%2569")
def test_canonical_paths_are_fixed_points_without_dot_segments_or_escaped_unreserved(
    raw: str,
) -> None:
    try:
        path = canonical_path(raw)
    except InvalidPath:
        return
    assert canonical_path(path) == path
    assert path.startswith("/")
    for bad in ("//", "/./", "/../", "\\", "?", "#", ";"):
        assert bad not in path
    assert not path.endswith(("/.", "/.."))
    for escape in re.findall(r"%(..)", path):
        assert escape in ("25", "3F", "23", "3B")
        assert chr(int(escape, 16)) not in _UNRESERVED
    assert not re.search(r"[\x00-\x1f\x7f]", path)
    path.encode("utf-8")
