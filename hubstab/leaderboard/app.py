"""The hubstab leaderboard: models ranked by relative stability R_f, against their test error.

Run ``hubstab leaderboard [--results DIR|ORG/NAME] [--port 7860]`` or, in the hub Space folder,
``python app.py``. The results source is ``--results``, else ``$HUBSTAB_RESULTS`` (a folder or a hub dataset
repo ``org/name``), else ``./hubstab-results``; with none of them the board starts empty with instructions.
A hub repo is read again every :data:`REFRESH_S` seconds and on the *Reload* button.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path
from typing import Any

import gradio as gr
import pandas as pd

from hubstab.errors import HubstabError, ResultsValidationError
from hubstab.leaderboard import about, plots, reading, submit
from hubstab.leaderboard import columns as C
from hubstab.results.validate import MAX_RECORD_BYTES

REFRESH_S = 600.0
"""Seconds between two reads of the results source while the app runs."""
FILTERS: tuple[str, ...] = (C.FAMILY, C.ADAPTER)


class Board:
    """The results a running app serves: those of its source, re-read on demand, plus each session's uploads.

    Args:
        source: a results folder or hub dataset repo (None: ``$HUBSTAB_RESULTS`` or ``./hubstab-results``).
        strict: raise when the source cannot be read (the CLI); otherwise the board is empty and says why
            (a Space must start even when its results repo is unreachable for a while).
    """

    def __init__(self, source: str | os.PathLike[str] | None, *, strict: bool = False):
        self.source = source
        self.strict = strict
        self.reference = reading.default_reference()
        self.loaded = reading.LoadedResults()
        self.reload()
        self.strict = False  # only the first read may stop the app

    def reload(self) -> None:
        """Read the source again (new files in the folder or new commits in the hub repo)."""
        self.loaded_at = time.monotonic()
        try:
            self.loaded = reading.load_results(self.source)
        except HubstabError as err:
            if self.strict:
                raise
            self.loaded = reading.LoadedResults(source=str(self.source), error=str(err))

    def refresh(self, max_age_s: float = REFRESH_S) -> bool:
        """Read the source again when the last read is older than ``max_age_s`` (every session's timer and
        page load ask; the source is read once for all of them). Returns whether it was read."""
        if time.monotonic() - self.loaded_at < max_age_s:
            return False
        self.reload()
        return True

    def table(self, session: list[dict[str, Any]]) -> tuple[pd.DataFrame, list[dict[str, Any]], int]:
        """Full table, the records behind it, and how many other runs of the same rows were left out."""
        kept, left_out = reading.select_runs([*self.loaded.records, *session])
        return reading.records_to_frame(kept, self.reference), kept, left_out

    def summary(self, session: list[dict[str, Any]], left_out: int) -> str:
        """The status line: what was read from where, what was skipped, added or left out."""
        text = self.loaded.summary()
        if session:
            text += f"; {len(session)} file(s) added in this session"
        if left_out:
            text += f"; {left_out} other run(s) of the same model, dataset and protocol not shown"
        return text


def _problems_frame(board: Board, extra: list[reading.Problem]) -> pd.DataFrame:
    problems = [*board.loaded.problems, *extra]
    return pd.DataFrame({"file": [p.path for p in problems], "problem": [p.message for p in problems]})


def _protocols_markdown(frame: pd.DataFrame, records: list[dict[str, Any]]) -> str:
    """The protocols on the board with the settings that define them (values from the records, escaped)."""
    if frame.empty:
        return "No results on the board yet."
    lines = [
        "| protocol | delta (px) | cut | interpolation | estimator | batchnorm | runs |",
        "|---" * 7 + "|",
    ]
    counts = frame.groupby(C.PROTOCOL).size()
    seen: set[str] = set()
    for _, row in frame.iterrows():
        name = str(row[C.PROTOCOL])
        if name in seen:
            continue
        seen.add(name)
        proto = records[int(row[reading.RECORD])]["config"]["protocol"]
        cells = [name, f"{proto['delta']:g}", proto["cut"], proto["interp"], proto["estimator"]]
        cells += [proto.get("batchnorm", "eval"), int(counts[name])]
        lines.append("| " + " | ".join(reading.escape_markdown(str(c)) for c in cells) + " |")
    return "\n".join(lines)


def build_app(
    source: str | os.PathLike[str] | None = None, *, strict: bool = False, api: Any = None
) -> gr.Blocks:
    """The Gradio app over a results folder or hub dataset repo (see :func:`reading.resolve_source`).

    Args:
        source: results folder or hub dataset repo id; None: ``$HUBSTAB_RESULTS``, else ``./hubstab-results``.
        strict: raise when the source cannot be read (else start empty and show why).
        api: ``HfApi``-like object for submissions (default: ``HfApi`` with ``$HF_TOKEN``).

    Raises:
        HubstabError: with ``strict``, the source is neither a folder nor a hub dataset repo that can be fetched.
    """
    board = Board(source, strict=strict)
    target = submit.HubTarget.from_env(None if source is None else os.fspath(source))
    frame0, _, _ = board.table([])
    column_choices = [c for c in frame0.columns if not c.startswith("_")]

    def render(
        search,
        chosen,
        group,
        families,
        adapters,
        show_init,
        error_source,
        fit_untrained,
        all_groups,
        session,
        detail,
        extra_problems,
    ):
        frame, kept, left_out = board.table(session)
        group_choices = reading.group_choices(frame)
        values = [value for _, value in group_choices]
        group = group if group in values else reading.default_group(frame)
        filtered = reading.filter_frame(
            frame, search=search, families=families, adapters=adapters, group=group
        )
        trained = reading.filter_frame(filtered, untrained=False)
        at_init = reading.filter_frame(filtered, untrained=True)
        shown = reading.display_frame(trained, chosen)
        init_shown = reading.display_frame(at_init, chosen).drop(columns=[C.RANK])
        law = plots.law_plot(
            reading.filter_frame(frame, search=search, families=families, adapters=adapters),
            error_source,
            include_untrained=bool(fit_untrained),
            group=group,
            all_groups=bool(all_groups),
        )
        law_text = "\n".join([law.note, law.fit.describe(), law.correlation.describe()])
        if all_groups and law.group_fits:
            law_text += "\n" + "\n".join(f"{g}: {f.describe()}" for g, f in law.group_fits.items())
        runs = [(reading.describe_record(kept[i]), kept[i]["run_id"]) for i in frame[reading.RECORD]]
        ids = [value for _, value in runs]
        detail = detail if detail in ids else (ids[0] if ids else None)
        filters = [
            gr.Dropdown(
                choices=reading.choices(frame, col),
                value=[v for v in (val or []) if v in set(reading.choices(frame, col))],
            )
            for col, val in zip(FILTERS, (families, adapters), strict=True)
        ]
        all_columns = [c for c in frame.columns if not c.startswith("_")]
        untrained_count = len(at_init)
        init_label = f"At initialisation: random weights, not ranked ({untrained_count} run(s))"
        return (
            gr.Dataframe(value=shown, datatype=reading.datatypes(shown)),
            gr.Dataframe(
                value=init_shown,
                datatype=reading.datatypes(init_shown),
                label=init_label,
                visible=(bool(show_init) or trained.empty) and untrained_count > 0,  # alone: shown anyway
            ),
            "**Columns.**\n" + reading.legend(shown),
            gr.Markdown(visible=frame.empty),
            gr.Checkbox(label=f"Show models at initialisation ({untrained_count} in this group, not ranked)"),
            gr.Plot(value=law.chart, visible=law.chart is not None),
            law_text,
            board.summary(session, left_out),
            gr.Dropdown(choices=runs, value=detail),
            gr.CheckboxGroup(choices=all_columns, value=[c for c in (chosen or []) if c in all_columns]),
            gr.Dropdown(choices=group_choices, value=group),
            *filters,
            _problems_frame(board, extra_problems),
            about.PROTOCOLS + "\n\n### Protocols on this board\n\n" + _protocols_markdown(frame, kept),
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
        config = dict(record["config"])
        config["model_name"] = reading.model_label(config["model_name"])
        config["dataset"] = reading.dataset_label({"dataset": config["dataset"]})
        info = {
            "config": config,
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
        record[reading.ORIGIN_KEY] = reading.SESSION
        message = f"Accepted: {reading.describe_record(record)}."
        if target.writable:
            try:
                url = submit.open_pull_request(record, Path(path).read_bytes(), target, api=api)
            except HubstabError as err:
                message += f" It is shown in this session, but publishing failed: {err}"
            else:
                message += f" A pull request to {target.repo_id} is open for review: {url}"
        else:
            message += (
                " It is shown in this session only (this board has no write token); to publish it, run "
                "hubstab push FILE --repo ORG/NAME --pr."
            )
        return [*session, record], message

    def request_model(model_id, revision):
        try:
            path = submit.request_evaluation(model_id, target, revision=revision, api=api)
        except HubstabError as err:
            return f"Not requested: {err}"
        return f"Requested: {path} in {target.repo_id} (status PENDING)"

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

    def reload():
        board.reload()

    def refresh(max_age_s: float) -> None:  # no return value: the event has no outputs (gradio warns)
        board.refresh(max_age_s)

    with gr.Blocks(title="hubstab leaderboard") as demo:
        session = gr.State([])
        extra_problems = gr.State([])
        gr.Markdown(about.TITLE)
        gr.Markdown(about.INTRODUCTION)
        status = gr.Textbox(label="Results", interactive=False, elem_id="results-status")
        empty = gr.Markdown(about.EMPTY_BOARD, elem_id="empty-board", visible=frame0.empty)
        with gr.Tabs():
            with gr.Tab("Leaderboard", id="leaderboard"):
                with gr.Row():
                    group = gr.Dropdown(
                        label="Dataset | protocol (ranks count within it)",
                        choices=reading.group_choices(frame0),
                        value=reading.default_group(frame0),
                        elem_id="group",
                        scale=2,
                    )
                    search = gr.Textbox(
                        label="Search models",
                        placeholder="resnet; vit   (plain text, ';' separates terms)",
                        scale=2,
                    )
                    reload_button = gr.Button("Reload results", scale=0, elem_id="reload")
                with gr.Row():
                    family_f = gr.Dropdown(
                        label="Model family", multiselect=True, choices=reading.choices(frame0, C.FAMILY)
                    )
                    adapter_f = gr.Dropdown(
                        label="Adapter", multiselect=True, choices=reading.choices(frame0, C.ADAPTER)
                    )
                    show_init = gr.Checkbox(
                        label="Show models at initialisation (not ranked)", value=False, elem_id="show-init"
                    )
                with gr.Accordion("Columns", open=False):
                    chosen = gr.CheckboxGroup(
                        label="Columns shown (Rank, Model and R_f always are; empty columns are hidden)",
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
                init_table = gr.Dataframe(
                    interactive=False, elem_id="init-table", max_height=400, wrap=False, visible=False
                )
                legend = gr.Markdown(elem_id="column-legend")
                with gr.Accordion("Skipped files", open=False, elem_id="skipped"):
                    problems_table = gr.Dataframe(
                        value=_problems_frame(board, []),
                        datatype=["str", "str"],
                        interactive=False,
                        wrap=True,
                        elem_id="skipped-table",
                    )
            with gr.Tab("Error vs stability", id="plot"):
                error_source = gr.Radio(
                    label="Error on the vertical axis",
                    choices=list(plots.ERROR_SOURCES),
                    value=plots.HUBSTAB_ERROR,
                )
                with gr.Row():
                    fit_untrained = gr.Checkbox(
                        label="Fit untrained models too (off: random initialisations are plotted, not fitted)",
                        value=False,
                    )
                    all_groups = gr.Checkbox(
                        label="All dataset/protocol groups, each with its own fit",
                        value=False,
                        elem_id="all-groups",
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
                gr.Markdown(about.submit_text(target.repo_id, target.writable))
                upload = gr.File(
                    label="Results file (.json)", file_types=[".json"], type="filepath", elem_id="upload"
                )
                submit_button = gr.Button("Validate and submit", elem_id="submit-file")
                with gr.Row():
                    model_request = gr.Textbox(
                        label="Request an evaluation: model id (org/name)", elem_id="request-model"
                    )
                    revision_request = gr.Textbox(label="Revision (default main)", elem_id="request-revision")
                request_button = gr.Button("Request evaluation", elem_id="request")
                repo = gr.Textbox(
                    label="Or show a hub dataset repo with results files (org/name) in this session"
                )
                repo_button = gr.Button("Load repo")
                submission_status = gr.Textbox(
                    label="Submission status", interactive=False, lines=3, elem_id="submission-status"
                )
            with gr.Tab("About", id="about"):
                gr.Markdown(about.ABOUT, latex_delimiters=about.LATEX, elem_id="about")
                protocols = gr.Markdown(elem_id="protocols")

        view_inputs = [
            search,
            chosen,
            group,
            family_f,
            adapter_f,
            show_init,
            error_source,
            fit_untrained,
            all_groups,
            session,
            detail,
            extra_problems,
        ]
        view_outputs = [
            table,
            init_table,
            legend,
            empty,
            show_init,
            law_plot,
            law_text,
            status,
            detail,
            chosen,
            group,
            family_f,
            adapter_f,
            problems_table,
            protocols,
        ]

        demo.load(lambda: refresh(REFRESH_S)).then(render, view_inputs, view_outputs)
        search.submit(render, view_inputs, view_outputs)
        for component in (
            chosen,
            group,
            family_f,
            adapter_f,
            show_init,
            error_source,
            fit_untrained,
            all_groups,
        ):
            component.input(render, view_inputs, view_outputs)
        detail.change(details, [detail, session], [sweep_plot, layers_plot, detail_text, detail_json])
        submit_button.click(submit_file, [upload, session], [session, submission_status]).then(
            render, view_inputs, view_outputs
        )
        request_button.click(request_model, [model_request, revision_request], [submission_status])
        repo_button.click(
            submit_repo, [repo, session, extra_problems], [session, submission_status, extra_problems]
        ).then(render, view_inputs, view_outputs)
        reload_button.click(reload).then(render, view_inputs, view_outputs)
        timer = gr.Timer(REFRESH_S)
        timer.tick(lambda: refresh(REFRESH_S * 0.9)).then(render, view_inputs, view_outputs)
    return demo


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="hubstab leaderboard (Gradio app)")
    parser.add_argument(
        "--results",
        default=None,
        help=f"results folder or hub dataset repo (org/name); default ${reading.RESULTS_ENV}, "
        f"else ./{reading.DEFAULT_RESULTS}",
    )
    parser.add_argument("--host", default=os.environ.get("GRADIO_SERVER_NAME", "127.0.0.1"))
    parser.add_argument("--port", type=int, default=int(os.environ.get("GRADIO_SERVER_PORT", "7860")))
    parser.add_argument("--share", action="store_true", help="also open a public gradio.live link")
    return parser.parse_args(argv)


def launch(
    source: str | None,
    *,
    host: str = "127.0.0.1",
    port: int = 7860,
    share: bool = False,
    strict: bool = False,
) -> None:
    """Build the app and serve it until interrupted (uploads larger than the record limit are refused)."""
    demo = build_app(source, strict=strict)
    demo.launch(server_name=host, server_port=port, share=share, max_file_size=MAX_RECORD_BYTES)


def main(argv: list[str] | None = None) -> int:
    """Entry point of the hub Space (``python app.py``): never exits for a missing results source."""
    args = parse_args(argv)
    try:
        launch(
            args.results, host=args.host, port=args.port, share=args.share, strict=args.results is not None
        )
    except HubstabError as err:
        print(f"hubstab leaderboard: error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
