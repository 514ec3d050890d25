"""The monitor's Agents card: one agent by id, and pages of personas with a filter.

In: the Page this class is mixed into (its `monitor`, a MonitorState over the run directory, and
its `_card` builder). Out: the card's widgets, `inspect` (persona, state and memory at the latest
checkpoint, prompts and latest answers of one agent, read off the event loop) and the persona
pages (`load_personas`). A damaged persona file is said on the card; the rest of the page goes on.
"""
from __future__ import annotations

from .files import PAGE_ROWS, UNREADABLE, FilterError, PersonaPages, find_agent, persona_files, unreadable
from .widgets import pairs, shown, stamp


class AgentsPanel:
    """The Agents card (mixed into Page)."""

    def _agents_card(self) -> None:
        from nicegui import ui

        with self._card("Agents", "find one agent by id, or page through the personas (20 a page)"):
            with ui.row().classes("items-end gap-3"):
                self.agent_id = ui.number("agent id", value=0, min=0, format="%d").classes("w-32").mark("agent-id")
                self.population = ui.select({}, label="population").classes("w-40")
                self.population.set_visibility(False)
                ui.button("Inspect", icon="search", on_click=self.inspect).props("outline").mark("inspect")
            self.agent_view = ui.column().classes("w-full gap-2").mark("agent")
            ui.separator()
            with ui.row().classes("items-end gap-3 w-full"):
                self.filter = ui.input("filter", placeholder="age >= 21 · major = economics · background ~ physics").classes("w-96").mark("filter")
                self.filter.on("keydown.enter", lambda: self.load_personas(0))
                ui.button("Apply", on_click=lambda: self.load_personas(0)).props("outline").mark("apply-filter")
                ui.button(icon="chevron_left", on_click=lambda: self.load_personas(self.persona_page - 1)).props("flat").mark("prev-page")
                self.page_label = ui.label("").classes("text-sm text-slate-600").mark("page")
                ui.button(icon="chevron_right", on_click=lambda: self.load_personas(self.persona_page + 1)).props("flat").mark("next-page")
            self.filter_error = ui.label("").classes("text-sm text-red-700").mark("filter-error")
            self.personas_error = ui.label("").classes("text-sm text-red-700").mark("personas-error")
            self.personas_error.set_visibility(False)
            self.personas = ui.table(columns=[], rows=[], row_key="agent", pagination=PAGE_ROWS).props("flat dense hide-pagination").classes("w-full").mark("personas")

    async def inspect(self) -> None:
        from nicegui import run, ui

        if self.agent_id.value is None:
            return
        agent = int(self.agent_id.value)
        found = await run.io_bound(find_agent, self.monitor, agent, self.population.value or "")
        self.agent_view.clear()
        with self.agent_view:
            for problem in found.get("problems", ()):
                ui.label(problem).classes("text-sm text-red-700").mark("agent-problem")
            if not found["persona"] and not found["answers"]:
                ui.label(f"no agent {agent} in this run (yet)").classes("text-sm text-slate-500")
                return
            ui.label(f"agent {agent}").classes("font-semibold")
            if found["persona"]:
                pairs(found["persona"])
            if found.get("state"):
                ui.label(f"state and answers at checkpoint {found['checkpoint']}").classes("text-xs text-slate-500")
                pairs(found["state"])
            if found.get("memory"):
                ui.label(f"memory at checkpoint {found['checkpoint']}").classes("text-xs text-slate-500")
                for entry in found["memory"]:
                    ui.label(f"{entry['role']}: {entry['text']}").classes(
                        "mono text-xs whitespace-pre-wrap bg-slate-50 p-2 rounded w-full").mark("memory")
            for step, prompt in found["prompts"].items():
                ui.label(f"prompt of {step[5:]} (template)").classes("text-xs text-slate-500")
                ui.label(prompt).classes("mono text-xs whitespace-pre-wrap bg-slate-50 p-2 rounded w-full")
            columns = [{"name": k, "label": k, "field": k, "align": "left"}
                       for k in ("iteration", "step", "value", "reply", "error", "prompt_hash")]
            rows = [{k: ("" if a.get(k) is None else str(a.get(k))) for k in ("iteration", "step", "value", "reply", "error", "prompt_hash")}
                    for a in found["answers"]]
            ui.table(columns=columns, rows=rows, row_key="iteration").props("flat dense wrap-cells").classes("w-full").mark("answers")

    def _init_personas(self) -> None:
        files = persona_files(self.monitor.run_dir)
        if len(files) > 1:
            self.population.set_options({name: name for name in files}, value=next(iter(files)))
            self.population.set_visibility(True)
            self.population.on_value_change(lambda: self._switch_population())
        self._switch_population()

    def _switch_population(self) -> None:
        files = persona_files(self.monitor.run_dir)
        path = files.get(self.population.value or "") or next(iter(files.values()))
        try:
            self.persona_pages = PersonaPages(path)
        except UNREADABLE as e:  # a damaged file: the persona table says so, the rest of the page goes on
            self.persona_pages = False  # tried: retried only when the file changes
            self._persona_failed_path, self._persona_stamp = path, stamp(path)
            self._personas_failed(unreadable(path, e, self.monitor.run_dir))
            return
        self.personas.columns = [{"name": c, "label": c, "field": c, "align": "left"} for c in self.persona_pages.columns]
        self.load_personas(0)

    def load_personas(self, number: int) -> None:
        if not self.persona_pages:
            return
        try:
            page = self.persona_pages.page(number, self.filter.value or "")
        except FilterError as e:
            self.filter_error.set_text(str(e))
            return
        except UNREADABLE as e:
            self._personas_failed(unreadable(self.persona_pages.path, e, self.monitor.run_dir))
            return
        self.filter_error.set_text("")
        self.personas_error.set_visibility(False)
        self.persona_page = page["page"]
        self.personas.rows = [{k: shown(v) for k, v in row.items()} for row in page["rows"]]
        self.personas.update()
        self.page_label.set_text(f"page {page['page'] + 1} of {page['pages']} · {page['total']:,} agents")

    def _personas_failed(self, message: str) -> None:
        self.personas_error.set_text(message)
        self.personas_error.set_visibility(True)
        self.personas.rows = []
        self.personas.update()
        self.page_label.set_text("")

    def _draw_personas(self) -> None:
        """Open the persona file once it exists; after a damaged one, again only when it changed."""
        if self.persona_pages is None and persona_files(self.monitor.run_dir):
            self._init_personas()
        elif self.persona_pages is False and self._persona_stamp != stamp(self._persona_failed_path):
            self._switch_population()  # the damaged file changed (rewritten, or finished writing): try again
