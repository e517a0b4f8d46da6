"""Build python/mindscope/geodata/land_110m.json from Natural Earth's 1:110m countries.

Run once by a developer (not at install or run time):

    pip download --no-deps geopandas==0.14.4 pyshp==3.1.6 -d /tmp/ne
    cd /tmp/ne && unzip -o geopandas-0.14.4-*.whl 'geopandas/datasets/naturalearth_lowres/*'
    PYTHONPATH=$(python -c "import shapefile,os;print(os.path.dirname(shapefile.__file__))") \
        python tools/make_land_outline.py /tmp/ne/geopandas/datasets/naturalearth_lowres/naturalearth_lowres.shp

(with pyshp installed, or its wheel unpacked on PYTHONPATH). Countries are dissolved into land
by dropping every edge shared by two countries (the same vertices walked in opposite
directions); what is left is the coastline, chained into rings. Coordinates are rounded to
0.1 degree, far below what a map panel can show.
"""

from __future__ import annotations

import json
import sys
from collections import defaultdict
from pathlib import Path

import shapefile  # pyshp

Point = tuple[float, float]


def _rings(path: str) -> list[list[Point]]:
    out = []
    for shape in shapefile.Reader(path).shapes():
        starts = list(shape.parts) + [len(shape.points)]
        for a, b in zip(starts, starts[1:]):
            ring: list[Point] = []
            for x, y in shape.points[a:b]:
                p = (round(x, 1), round(y, 1))
                if not ring or ring[-1] != p:
                    ring.append(p)
            if len(ring) >= 4:
                out.append(ring)
    return out


def _dissolve(rings: list[list[Point]]) -> list[list[Point]]:
    """Rings of the union: directed edges whose reverse also occurs are interior borders."""
    edges = [(r[i], r[i + 1]) for r in rings for i in range(len(r) - 1)]
    count: dict[tuple[Point, Point], int] = defaultdict(int)
    for e in edges:
        count[e] += 1
    boundary = [e for e in edges if not count.get((e[1], e[0]))]
    nxt: dict[Point, list[Point]] = defaultdict(list)
    for a, b in boundary:
        nxt[a].append(b)
    out = []
    while nxt:
        start = next(iter(nxt))
        ring, p = [start], start
        while nxt.get(p):
            q = nxt[p].pop()
            if not nxt[p]:
                del nxt[p]
            ring.append(q)
            p = q
            if p == start:
                break
        if len(ring) >= 4 and ring[0] == ring[-1]:
            out.append(ring)
    return out


def _signed_area(ring: list[Point]) -> float:
    return 0.5 * sum(x0 * y1 - x1 * y0 for (x0, y0), (x1, y1) in zip(ring, ring[1:]))


def _coast(ring: list[Point]) -> list[list[Point]]:
    """The ring as polylines without its edges along the map frame (the antimeridian, where
    Natural Earth cuts Russia and Fiji, and the South Pole edge of Antarctica)."""
    def on_frame(a: Point, b: Point) -> bool:
        return (abs(a[0]) >= 179.9 and a[0] == b[0]) or (a[1] <= -89.9 and b[1] <= -89.9)

    lines, cur = [], [ring[0]]
    for a, b in zip(ring, ring[1:]):
        if on_frame(a, b):
            if len(cur) > 1:
                lines.append(cur)
            cur = [b]
        else:
            cur.append(b)
    if len(cur) > 1:
        lines.append(cur)
    return lines


def main(shp: str, out: Path) -> None:
    rings = _dissolve(_rings(shp))
    # Shapefile outer rings run clockwise (negative signed area), holes (the Caspian) counter-clockwise.
    land = [r for r in rings if _signed_area(r) < 0]
    lakes = [r for r in rings if _signed_area(r) > 0]
    coast = [line for r in rings for line in _coast(r)]
    flat = lambda rs: [[c for p in r for c in p] for r in rs]  # noqa: E731  [x0, y0, x1, y1, ...]
    doc = {"source": "Natural Earth 1:110m admin-0 countries (public domain), dissolved into land",
           "format": "rings as flat [lon0, lat0, lon1, lat1, ...] lists, degrees",
           "land": flat(land), "lakes": flat(lakes), "coast": flat(coast)}
    out.write_text(json.dumps(doc, separators=(",", ":")))
    n = sum(len(r) for r in land)
    print(f"{len(land)} land rings ({n} points), {len(lakes)} lakes, {len(coast)} coast lines -> {out} "
          f"({out.stat().st_size / 1024:.0f} KB)")


if __name__ == "__main__":
    main(sys.argv[1], Path(__file__).resolve().parents[1] / "python" / "mindscope" / "geodata" / "land_110m.json")
