"""The hubstab leaderboard: models ranked by relative stability R_f, against their test error.

Run ``python leaderboard/app.py [--results DIR|ORG/NAME] [--port 7860]`` or ``hubstab leaderboard``. On a
hub Space, set the variable ``HUBSTAB_RESULTS`` to the results dataset repo.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import about
import columns as C
import gradio as gr
import pandas as pd
import plots
import reading

from hubstab.errors import HubstabError, ResultsValidationError
from hubstab.results.validate import MAX_RECORD_BYTES

FILTERS: tuple[str, ...] = (C.DATASET, C.PROTOCOL, C.FAMILY, C.ADAPTER)


class Board:
    """The results a running app serves: those of its source, re-read on demand, plus each session's uploads."""

    def __init__(self, source: str | os.PathLike[str] | None):
        self.source = source
        self.reference = reading.default_reference()
        self.loaded = reading.load_results(source)

    def reload(self) -> None:
        """Read the source again (new files in the folder or new commits in the hub repo)."""
        self.loaded = reading.load_results(self.source)

    def table(self, session: list[dict[str, Any]]) -> tuple[pd.DataFrame, list[dict[str, Any]], int]:
        """Full table, the records behind it, and how many older runs were superseded."""
        kept, superseded = reading.latest_records([*self.loaded.records, *session])
        return reading.records_to_frame(kept, self.reference), kept, superseded

    def summary(self, session: list[dict[str, Any]], superseded: int) -> str:
        text = self.loaded.summary()
        if session:
            text += f"; {len(session)} file(s) added in this session"
        if superseded:
            text += f"; {superseded} older run(s) of the same model, dataset and protocol hidden"
        return text


def _datatypes(frame: pd.DataFrame) -> list[str]:
    return [C.BY_NAME[c].kind for c in frame.columns]


def _problems_frame(board: Board, extra: list[reading.Problem]) -> pd.DataFrame:
    problems = [*board.loaded.problems, *extra]
    return pd.DataFrame({"file": [p.path for p in problems], "problem": [p.message for p in problems]})


def build_app(source: str | os.PathLike[str] | None = None) -> gr.Blocks:
    """The Gradio app over a results folder or hub dataset repo (see :func:`reading.resolve_source`).

    Raises:
        HubstabError: the source is neither a folder nor a hub dataset repo that can be fetched.
    """
    board = Board(source)
    frame0, _, _ = board.table([])
    column_choices = [c for c in frame0.columns if not c.startswith("_")]

    def render(
        search, chosen, datasets, protocols, families, adapters, error_source, fit_untrained, session, detail
    ):
        frame, kept, superseded = board.table(session)
        filtered = reading.filter_frame(
            frame, search=search, datasets=datasets, protocols=protocols, families=families, adapters=adapters
        )
        shown = reading.display_frame(filtered, chosen)
        law = plots.law_plot(filtered, error_source, include_untrained=bool(fit_untrained))
        law_text = "\n".join([law.note, law.fit.describe(), law.correlation.describe()])
        runs = [
            (reading.describe_record(kept[i]), kept[i]["run_id"])
            for i in frame[reading.RECORD]  # in table order
        ]
        ids = [value for _, value in runs]
        detail = detail if detail in ids else (ids[0] if ids else None)
        filters = [
            gr.Dropdown(
                choices=reading.choices(frame, col),
                value=[v for v in (val or []) if v in set(reading.choices(frame, col))],
            )
            for col, val in zip(FILTERS, (datasets, protocols, families, adapters), strict=True)
        ]
        all_columns = [c for c in frame.columns if not c.startswith("_")]
        return (
            gr.Dataframe(value=shown, datatype=_datatypes(shown)),
            gr.Plot(value=law.chart, visible=law.chart is not None),
            law_text,
            board.summary(session, superseded),
            gr.Dropdown(choices=runs, value=detail),
            gr.CheckboxGroup(choices=all_columns, value=[c for c in (chosen or []) if c in all_columns]),
            *filters,
        )

    def details(run_id, session):
        _, kept, _ = board.table(session)
        record = next((r for r in kept if r["run_id"] == run_id), None)
        if record is None:
            return (
                gr.Plot(value=None, visible=False),
                gr.Plot(value=None, visible=False),
                "choose a run",
                None,
            )
        sweep = plots.sweep_chart(record)
        layers = plots.layers_chart(record)
        notes = [reading.describe_record(record)]
        notes.append(
            "R_f against temperature: shown" if sweep is not None else "no temperature sweep in this run"
        )
        notes.append(
            "per-layer curves: shown" if layers is not None else "no per-layer measurement in this run"
        )
        notes.extend(f"note: {n}" for n in record.get("notes", []))
        info = {
            "config": record["config"],
            "environment": record.get("environment"),
            "created_at": record["created_at"],
            "run_id": record["run_id"],
        }
        return (
            gr.Plot(value=sweep, visible=sweep is not None),
            gr.Plot(value=layers, visible=layers is not None),
            "\n".join(notes),
            info,
        )

    def submit_file(path, session):
        try:
            record = reading.accept_submission(path)
        except ResultsValidationError as err:
            return session, f"Rejected: {err}"
        return [*session, record], (
            f"Accepted: {reading.describe_record(record)}. It is shown in this session only; to publish it, "
            "add the file to the results dataset repo."
        )

    def submit_repo(repo_id, session, problems):
        try:
            loaded = reading.load_hub_results(repo_id)
        except HubstabError as err:
            return session, f"Rejected: {err}", problems
        added = [reading.Problem(f"{repo_id}: {p.path}", p.message) for p in loaded.problems]
        message = f"Loaded {len(loaded.records)} valid file(s) from {loaded.source}"
        if added:
            message += f"; {len(added)} invalid file(s) skipped (see 'Skipped files')"
        return [*session, *loaded.records], message, [*problems, *added]

    def reload(problems):
        board.reload()
        return []

    with gr.Blocks(title="hubstab leaderboard") as demo:
        session = gr.State([])
        extra_problems = gr.State([])
        gr.Markdown(about.TITLE)
        gr.Markdown(about.INTRODUCTION)
        status = gr.Textbox(label="Results", interactive=False, elem_id="results-status")
        with gr.Tabs():
            with gr.Tab("Leaderboard", id="leaderboard"):
                with gr.Row():
                    search = gr.Textbox(
                        label="Search models",
                        placeholder="resnet; vit   (plain text, ';' separates terms)",
                        scale=2,
                    )
                    reload_button = gr.Button("Reload results", scale=0)
                with gr.Row():
                    dataset_f = gr.Dropdown(
                        label="Dataset", multiselect=True, choices=reading.choices(frame0, C.DATASET)
                    )
                    protocol_f = gr.Dropdown(
                        label="Protocol", multiselect=True, choices=reading.choices(frame0, C.PROTOCOL)
                    )
                    family_f = gr.Dropdown(
                        label="Model family", multiselect=True, choices=reading.choices(frame0, C.FAMILY)
                    )
                    adapter_f = gr.Dropdown(
                        label="Adapter", multiselect=True, choices=reading.choices(frame0, C.ADAPTER)
                    )
                with gr.Accordion("Columns", open=False):
                    chosen = gr.CheckboxGroup(
                        label="Columns shown (Rank, Model and R_f always are)",
                        choices=column_choices,
                        value=[c for c in C.DEFAULT_COLUMNS if c in column_choices],
                    )
                table = gr.Dataframe(
                    interactive=False,
                    elem_id="leaderboard-table",
                    max_height=640,
                    wrap=False,
                    show_label=False,
                )
                with gr.Accordion("Skipped files", open=False):
                    problems_table = gr.Dataframe(
                        value=_problems_frame(board, []),
                        datatype=["str", "str"],
                        interactive=False,
                        wrap=True,
                    )
            with gr.Tab("Error vs stability", id="plot"):
                error_source = gr.Radio(
                    label="Error on the vertical axis",
                    choices=list(plots.ERROR_SOURCES),
                    value=plots.HUBSTAB_ERROR,
                )
                fit_untrained = gr.Checkbox(
                    label="Fit untrained models too (off: random initialisations are plotted, not fitted)",
                    value=False,
                )
                law_plot = gr.Plot(elem_id="law-plot", show_label=False)
                law_text = gr.Textbox(label="Fit", interactive=False, lines=3, elem_id="law-text")
                gr.Markdown(about.FIT_HELP)
            with gr.Tab("Model details", id="details"):
                detail = gr.Dropdown(label="Run", choices=[], elem_id="detail-run")
                detail_text = gr.Textbox(label="Run", interactive=False, lines=3, show_label=False)
                sweep_plot = gr.Plot(label="R_f against temperature")
                layers_plot = gr.Plot(label="Per-layer stabilities")
                detail_json = gr.JSON(label="Settings and environment")
            with gr.Tab("Submit", id="submit"):
                gr.Markdown(about.SUBMIT)
                upload = gr.File(
                    label="Results file (.json)", file_types=[".json"], type="filepath", elem_id="upload"
                )
                submit_button = gr.Button("Validate and add", elem_id="submit-file")
                repo = gr.Textbox(label="Or a hub dataset repo with results files (org/name)")
                repo_button = gr.Button("Load repo")
                submission_status = gr.Textbox(
                    label="Submission status", interactive=False, lines=3, elem_id="submission-status"
                )
            with gr.Tab("About", id="about"):
                gr.Markdown(about.ABOUT)

        view_inputs = [
            search,
            chosen,
            dataset_f,
            protocol_f,
            family_f,
            adapter_f,
            error_source,
            fit_untrained,
            session,
            detail,
        ]
        view_outputs = [
            table,
            law_plot,
            law_text,
            status,
            detail,
            chosen,
            dataset_f,
            protocol_f,
            family_f,
            adapter_f,
        ]

        demo.load(render, view_inputs, view_outputs)
        for component in (search,):
            component.submit(render, view_inputs, view_outputs)
        for component in (chosen, dataset_f, protocol_f, family_f, adapter_f, error_source, fit_untrained):
            component.input(render, view_inputs, view_outputs)
        detail.change(details, [detail, session], [sweep_plot, layers_plot, detail_text, detail_json])
        submit_button.click(submit_file, [upload, session], [session, submission_status]).then(
            render, view_inputs, view_outputs
        )
        repo_button.click(
            submit_repo, [repo, session, extra_problems], [session, submission_status, extra_problems]
        ).then(lambda extra: _problems_frame(board, extra), [extra_problems], [problems_table]).then(
            render, view_inputs, view_outputs
        )
        reload_button.click(reload, [extra_problems], [extra_problems]).then(
            lambda extra: _problems_frame(board, extra), [extra_problems], [problems_table]
        ).then(render, view_inputs, view_outputs)
    return demo


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="hubstab leaderboard (Gradio app)")
    parser.add_argument(
        "--results",
        default=None,
        help=f"results folder or hub dataset repo (org/name); default ${reading.RESULTS_ENV} or ./results",
    )
    parser.add_argument("--host", default=os.environ.get("GRADIO_SERVER_NAME", "127.0.0.1"))
    parser.add_argument("--port", type=int, default=int(os.environ.get("GRADIO_SERVER_PORT", "7860")))
    parser.add_argument("--share", action="store_true", help="also open a public gradio.live link")
    return parser.parse_args(argv)


def launch(source: str | None, *, host: str = "127.0.0.1", port: int = 7860, share: bool = False) -> None:
    """Build the app and serve it until interrupted (uploads larger than the record limit are refused)."""
    demo = build_app(source)
    demo.launch(server_name=host, server_port=port, share=share, max_file_size=MAX_RECORD_BYTES)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        launch(args.results, host=args.host, port=args.port, share=args.share)
    except HubstabError as err:
        print(f"hubstab leaderboard: error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
