"""console/svg.py: line charts as inline SVG, parsed back as XML."""

from __future__ import annotations

import xml.etree.ElementTree as ET

import pytest

from console.svg import MAX_LEGEND, Series, format_si, line_chart, nice_ceiling

NS = "{http://www.w3.org/2000/svg}"


def parse(svg: str) -> ET.Element:
    return ET.fromstring(svg)


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (0, 1),
        (-3, 1),
        (0.7, 1),
        (1, 1),
        (1.2, 2),
        (3, 5),
        (7, 10),
        (10, 10),
        (11, 20),
        (4500, 5000),
    ],
)
def test_nice_ceiling(value: float, expected: float) -> None:
    assert nice_ceiling(value) == pytest.approx(expected)


def test_format_si() -> None:
    assert format_si(0) == "0"
    assert format_si(950) == "950"
    assert format_si(1500) == "1.5k"
    assert format_si(2_000_000) == "2M"
    assert format_si(0.25) == "0.25"


def test_empty_chart_says_so() -> None:
    root = parse(line_chart([], title="records/s"))
    texts = [t.text for t in root.iter(f"{NS}text")]
    assert "no samples yet" in texts
    assert "records/s" in texts


def test_points_are_scaled_into_the_plot() -> None:
    series = [Series("orders", [(1000.0, 0.0), (1005.0, 5.0), (1010.0, 10.0)])]
    root = parse(line_chart(series, title="t", width=640, height=220))
    (line,) = root.iter(f"{NS}polyline")
    points = [tuple(map(float, p.split(","))) for p in line.get("points", "").split()]
    xs = [x for x, _ in points]
    ys = [y for _, y in points]
    assert xs == sorted(xs) and xs[0] == 64 and xs[-1] == 640 - 16  # left and right edge
    # value axis 0..10: the first point sits on the bottom edge, the last on the top edge
    assert ys[0] == pytest.approx(220 - 28) and ys[-1] == pytest.approx(28)
    assert ys[1] == pytest.approx((ys[0] + ys[-1]) / 2)
    legend = [t.text for t in root.iter(f"{NS}text") if t.get("class") == "legend"]
    assert legend == ["orders (now 10)"]


def test_single_point_is_a_dot_and_names_are_escaped() -> None:
    svg = line_chart([Series("<script>alert(1)</script>", [(5.0, 3.0)])], title="a & b")
    assert "<script>" not in svg
    root = parse(svg)  # still well-formed XML
    assert len(list(root.iter(f"{NS}circle"))) == 1
    assert any("<script>" in (t.text or "") for t in root.iter(f"{NS}text"))


def test_legend_is_capped() -> None:
    series = [Series(f"s{i}", [(0.0, i), (1.0, i)]) for i in range(MAX_LEGEND + 3)]
    root = parse(line_chart(series, title="many"))
    assert len(list(root.iter(f"{NS}polyline"))) == MAX_LEGEND + 3
    legend = [t.text for t in root.iter(f"{NS}text") if t.get("class") == "legend"]
    assert len(legend) == MAX_LEGEND + 1 and legend[-1] == "+ 3 more"
