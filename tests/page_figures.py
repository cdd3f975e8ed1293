"""Every figure a dashboard page shows, read from the real page under Streamlit's AppTest, as JSON.

``python -m tests.page_figures overview:main risk/Stress:main ...`` (run from the repository root, with the
environment the dashboard gets: ``REDIS_URL``, ``RISKDESK_CONFIG``, ``RISKDESK__*``) renders each named page
(``page[/risk_tab]:portfolio``) as a browser session would, in a process of its own (a fresh dashboard: no
cache survives from an earlier run), and prints one JSON object: ``{"<page spec>": [element, ...]}``.

Each element is what Streamlit sends to the browser for it (the ``ForwardMsg`` delta, as a dict), with the
parts a person reads decoded: a table's Arrow bytes as its rows of cells, a Plotly chart's spec as JSON.
Nothing is left out here; a caller that compares two readings names what it ignores.
"""

from __future__ import annotations

import json
import sys
from typing import Any

from google.protobuf.json_format import MessageToDict
from streamlit.dataframe_util import convert_arrow_bytes_to_pandas_df
from streamlit.testing.v1 import AppTest, local_script_runner

from .e2e_stack import ROOT

APP = ROOT / "dashboard" / "app.py"
TIMEOUT = 60.0


class _Recorder:
    """Keeps the ForwardMsgs of the last script run (wraps AppTest's own parser; nothing is replaced)."""

    def __init__(self) -> None:
        self.messages: list[Any] = []
        original = local_script_runner.parse_tree_from_messages

        def recording(messages: list[Any]) -> Any:
            self.messages = list(messages)
            return original(messages)

        local_script_runner.parse_tree_from_messages = recording


def _cell(value: Any) -> Any:
    """A table cell as JSON: numbers and text as they are, anything else (timestamps, NaN) as its text."""
    if isinstance(value, bool | int | str) or value is None:
        return value
    if isinstance(value, float):
        return value if value == value else "NaN"
    return str(value)


def element_dict(element: Any) -> dict[str, Any]:
    """One element as a dict: the protobuf fields, a table's rows and a chart's spec decoded."""
    out = MessageToDict(element, preserving_proto_field_name=True)
    kind = element.WhichOneof("type")
    if kind == "arrow_data_frame" or kind == "dataframe":
        proto = getattr(element, kind)
        df = convert_arrow_bytes_to_pandas_df(proto.arrow_data.data if kind == "dataframe" else proto.data)
        body = out[kind]
        body.pop("arrow_data", None)
        body.pop("data", None)
        body["columns_shown"] = [str(c) for c in df.columns]
        body["rows"] = [[_cell(v) for v in row] for row in df.itertuples(index=False)]
        body["index"] = [_cell(v) for v in df.index]
    elif kind == "plotly_chart":
        body = out[kind]
        if "spec" in body:
            body["spec"] = json.loads(body["spec"])
    return out


def render(spec: str, recorder: _Recorder) -> list[dict[str, Any]]:
    """Render ``page[/tab]:portfolio`` once, live refresh paused, and return its elements."""
    target, _, portfolio = spec.partition(":")
    page, _, tab = target.partition("/")
    at = AppTest.from_file(str(APP), default_timeout=TIMEOUT)
    at.session_state["refresh"] = "Paused"
    if portfolio:
        at.session_state["portfolio"] = portfolio
    if tab:
        at.session_state[f"{page}_tab"] = tab
    at.switch_page(f"screens/{page}.py")
    at.run()
    if at.exception:
        raise RuntimeError(f"{spec}: the page raised {[e.value for e in at.exception]}")
    return [
        element_dict(msg.delta.new_element)
        for msg in recorder.messages
        if msg.HasField("delta") and msg.delta.WhichOneof("type") == "new_element"
    ]


def main(argv: list[str]) -> int:
    recorder = _Recorder()
    json.dump({spec: render(spec, recorder) for spec in argv}, sys.stdout, sort_keys=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
