"""The catalog file: parsing, validation, and the compact in-memory form agents keep."""

from __future__ import annotations

import json

import pytest

from shared.catalog import Catalog, CatalogError, CatalogItem, parse_catalog

ITEMS = (
    CatalogItem("85123A", "WHITE HANGING HEART T-LIGHT HOLDER", "Home", 2.55),
    CatalogItem("71053", "WHITE METAL LANTERN", "", None),
    CatalogItem("é-ß/1", "tässe ☕", "Küche", 0.0),
)


def test_round_trip_keeps_every_field() -> None:
    parsed = parse_catalog(Catalog(ITEMS, (2, 0)).to_bytes(), 3)
    assert list(parsed.items) == list(ITEMS)
    assert parsed.items[-1] == ITEMS[-1] and list(parsed.items[1:]) == list(ITEMS[1:])
    assert parsed.popular == (2, 0)
    assert parsed.index_of() == {"85123A": 0, "71053": 1, "é-ß/1": 2}
    with pytest.raises(IndexError):
        parsed.items[3]


@pytest.mark.parametrize(
    "raw, message",
    [
        ({"items": [{"id": "a"}, {"id": "a"}, {"id": "b"}]}, "appears twice"),
        ({"items": [{"id": "a"}, {"id": "b"}]}, "has 2 items"),
        ({"items": [{"id": "a"}, {"id": "b"}, {"id": "c", "price": "cheap"}]}, "non-numeric price"),
        ({"items": [{"id": "a"}, {"id": "b"}, {"id": "c"}], "popular": [3]}, "popular"),
    ],
)
def test_bad_catalogs_are_refused(raw: dict, message: str) -> None:  # type: ignore[type-arg]
    with pytest.raises(CatalogError, match=message):
        parse_catalog(json.dumps(raw).encode(), 3)


def test_new_items_round_trip_and_older_catalogues_have_none() -> None:
    catalog = Catalog(ITEMS, (0,), new=(2,))
    assert parse_catalog(catalog.to_bytes(), 3).new == (2,)
    assert "new" not in json.loads(Catalog(ITEMS, (0,)).to_bytes())  # unchanged for runs without new items
    assert parse_catalog(Catalog(ITEMS, (0,)).to_bytes(), 3).new == ()
    for bad in ([3], [-1], ["2"], 2):
        raw = json.loads(catalog.to_bytes()) | {"new": bad}
        with pytest.raises(CatalogError, match="new"):
            parse_catalog(json.dumps(raw).encode(), 3)
