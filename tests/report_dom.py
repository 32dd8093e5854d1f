"""Reading a report page (as written, or as dumped by a browser) with the stdlib parser."""

from __future__ import annotations

import base64
import io
import json
from dataclasses import dataclass, field
from html.parser import HTMLParser

import numpy as np
from PIL import Image

VOID = {"area", "base", "br", "col", "embed", "hr", "img", "input", "link", "meta", "source", "wbr"}


@dataclass
class Page:
    cards: list[dict[str, str]] = field(default_factory=list)  # attributes of each .card
    card_texts: list[str] = field(default_factory=list)
    thumbs: list[str] = field(default_factory=list)  # src of each card's <img>
    ids: dict[str, dict[str, str]] = field(default_factory=dict)  # attributes by id
    texts: dict[str, str] = field(default_factory=dict)  # text content by id
    tables: dict[str, list[list[str]]] = field(default_factory=dict)  # rows of cells by id
    bars: int = 0

    def visible_cards(self) -> list[dict[str, str]]:
        return [c for c in self.cards if "hidden" not in c]

    def json(self, script_id: str):
        return json.loads(self.texts[script_id])


class _Parser(HTMLParser):
    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.page = Page()
        self.stack: list[str | None] = []  # id of each open element that has one
        self.table: str | None = None
        self.row: list[str] | None = None
        self.cell: list[str] | None = None
        self.in_card = 0

    def handle_starttag(self, tag, attrs):
        a = {k: (v if v is not None else "") for k, v in attrs}
        classes = a.get("class", "").split()
        if "card" in classes and tag == "figure":
            self.page.cards.append(a)
            self.page.card_texts.append("")
            self.in_card = 1
        elif self.in_card and tag not in VOID:
            self.in_card += 1
        if tag == "img" and self.in_card:
            self.page.thumbs.append(a.get("src", ""))
        if tag == "rect" and "bar" in classes:
            self.page.bars += 1
        if "id" in a:
            self.page.ids[a["id"]] = a
            self.page.texts.setdefault(a["id"], "")
        if tag == "table" and "id" in a:
            self.table = a["id"]
            self.page.tables[self.table] = []
        if tag == "tr" and self.table:
            self.row = []
        if tag in ("td", "th") and self.row is not None:
            self.cell = []
        if tag not in VOID:
            self.stack.append(a.get("id"))

    def handle_endtag(self, tag):
        if tag in ("td", "th") and self.cell is not None and self.row is not None:
            self.row.append("".join(self.cell).strip())
            self.cell = None
        if tag == "tr" and self.row is not None and self.table:
            self.page.tables[self.table].append(self.row)
            self.row = None
        if tag == "table":
            self.table = None
        if self.in_card and tag not in VOID:
            self.in_card -= 1
        if tag not in VOID and self.stack:
            self.stack.pop()

    def handle_data(self, data):
        for element_id in self.stack:
            if element_id:
                self.page.texts[element_id] += data
        if self.cell is not None:
            self.cell.append(data)
        if self.in_card:
            self.page.card_texts[-1] += data


def parse(html: str) -> Page:
    parser = _Parser()
    parser.feed(html)
    return parser.page


def decode_data_uri(uri: str) -> np.ndarray:
    """The pixels of a base64 data URI image."""
    assert uri.startswith("data:image/"), uri[:40]
    raw = base64.b64decode(uri.split(",", 1)[1])
    with Image.open(io.BytesIO(raw)) as img:
        return np.asarray(img)
