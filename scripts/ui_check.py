"""Drive the real Dagster UI in headless Chromium: launch a `sample` run, check it, screenshot it.

Starts `dagster dev` on 127.0.0.1 with a temp DAGSTER_HOME, DuckDB and output folder, clicks
through the UI as a person would (raw group -> Materialize all -> partition `sample` -> Launch),
waits for the run page to say Success, opens the metadata plots of `raw__images` and the
expanded global asset lineage, saves a screenshot of each, then stops the server by its process
group and confirms the port is free. Needs /usr/bin/chromium, /usr/bin/chromedriver, selenium.

    .venv/bin/python scripts/ui_check.py [--out DIR] [--port N] [--docs docs/ui.png]

`--docs` first materializes every per-source stage (`vlit run --stage scored`) so the graph it
copies shows the whole lineage with data. Importable (the browser test does):
``run_ui_check(out_dir, *, port=None, all_stages=False, work_dir=None) -> dict``.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
CHROMIUM = Path("/usr/bin/chromium")
CHROMEDRIVER = Path("/usr/bin/chromedriver")
PARTITION = "sample"
PLOT_ASSET = "raw__images"
# Tall enough that the expanded graph fits with full asset cards after one zoom step.
VIEWPORT = (1600, 1250)
GRAPH_ASSETS = (
    "raw__images",
    "generated__conversations",
    "scored__conversations",
    "final__export",
)
# Chromium phones home unless told not to; the closed network refuses those connections.
CHROMIUM_FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-dev-shm-usage",
)
SERVER_START_TIMEOUT = 90.0
RUN_TIMEOUT = 150.0
UI_TIMEOUT = 30.0
STOP_TIMEOUT = 25.0
SCROLL_TO_CENTER = "arguments[0].scrollIntoView({block: 'center'})"
TERMINAL_RUN_STATES = ("Success", "Failure", "Canceled")


@dataclass
class Step:
    name: str
    ok: bool
    detail: str


@dataclass
class Report:
    steps: list[Step] = field(default_factory=list)
    screenshots: dict[str, str] = field(default_factory=dict)
    facts: dict[str, Any] = field(default_factory=dict)

    def record(self, name: str, ok: bool, detail: str) -> None:
        self.steps.append(Step(name, ok, detail))

    def as_dict(self) -> dict[str, Any]:
        return {
            "ok": bool(self.steps) and all(s.ok for s in self.steps),
            "steps": [s.__dict__ for s in self.steps],
            "screenshots": dict(self.screenshots),
            **self.facts,
        }


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def port_is_free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.settimeout(1.0)
        return sock.connect_ex(("127.0.0.1", port)) != 0


def isolated_env(work: Path) -> dict[str, str]:
    """Variables for a throwaway instance: nothing touches the repo's warehouse or .dagster_home."""
    home = work / "dagster_home"
    home.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(REPO / "dagster.yaml", home / "dagster.yaml")
    env = dict(os.environ)
    env.update(
        {
            "DAGSTER_HOME": str(home),
            "VLIT_DB_PATH": str(work / "warehouse.duckdb"),
            "VLIT_DATA_DIR": str(REPO / "data"),
            "VLIT_OUTPUT_DIR": str(work / "out"),
            "VLIT_LLM_BASE_URL": "",
            "VLIT_LLM_MODEL": "",
            "VLIT_LLM_API_KEY": "",
        }
    )
    return env


def materialize_sample(env: dict[str, str], cwd: Path, stage: str = "raw") -> str:
    """Register the `sample` partition and give the plots a first point: `vlit run --stage X`."""
    proc = subprocess.run(
        [sys.executable, "-m", "vlit_assets.cli", "run", "--stage", stage],
        env=env,
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=180,
    )
    if proc.returncode != 0:
        tail = (proc.stdout + proc.stderr)[-2000:]
        raise RuntimeError(f"vlit run --stage {stage} exited {proc.returncode}:\n{tail}")
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("run ")]
    return lines[0] if lines else "run finished"


def _default_signals() -> None:
    # A background shell ignores SIGINT in its children; dagster dev maps SIGTERM onto the SIGINT
    # handler, so without this it would ignore SIGTERM too and never shut down.
    signal.signal(signal.SIGINT, signal.SIG_DFL)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)


@dataclass
class DagsterDev:
    proc: subprocess.Popen[bytes]
    port: int
    log_path: Path

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def pgid(self) -> int:
        return self.proc.pid  # start_new_session makes the leader's pid the group id


def start_dagster_dev(env: dict[str, str], cwd: Path, port: int) -> DagsterDev:
    """`dagster dev` in its own session; cwd is a temp dir so no .env there overrides `env`."""
    log_path = cwd / "dagster_dev.log"
    cmd = [
        sys.executable,
        "-m",
        "dagster",
        "dev",
        "-w",
        str(REPO / "workspace.yaml"),
        "-h",
        "127.0.0.1",
        "-p",
        str(port),
    ]
    with log_path.open("wb") as log:
        proc = subprocess.Popen(
            cmd,
            env=env,
            cwd=cwd,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            preexec_fn=_default_signals,
        )
    return DagsterDev(proc=proc, port=port, log_path=log_path)


def graphql(server: DagsterDev, query: str, variables: dict[str, Any] | None = None) -> dict:
    body = json.dumps({"query": query, "variables": variables or {}}).encode()
    request = urllib.request.Request(
        f"{server.url}/graphql", data=body, headers={"Content-Type": "application/json"}
    )
    with urllib.request.urlopen(request, timeout=10) as response:
        return json.loads(response.read())


def wait_for_server(server: DagsterDev, timeout: float = SERVER_START_TIMEOUT) -> float:
    """Seconds until the webserver answers and the code location has loaded its definitions."""
    started = time.monotonic()
    query = "{ workspaceOrError { ... on Workspace { locationEntries { name loadStatus } } } }"
    while time.monotonic() - started < timeout:
        if server.proc.poll() is not None:
            tail = server.log_path.read_text(errors="replace")[-2000:]
            raise RuntimeError(f"dagster dev exited {server.proc.returncode}:\n{tail}")
        try:
            entries = graphql(server, query)["data"]["workspaceOrError"]["locationEntries"]
            if entries and all(e["loadStatus"] == "LOADED" for e in entries):
                return time.monotonic() - started
        except (OSError, ValueError, KeyError, TypeError):
            pass  # not listening yet, or answering before the workspace exists
        time.sleep(0.5)
    raise TimeoutError(f"dagster dev did not serve {server.url} within {timeout:.0f}s")


def _group_members(pgid: int) -> list[int]:
    """Live (non-zombie) processes of a process group, read from /proc."""
    members = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        # The command name may hold spaces or parentheses: split after the last ')'.
        fields = stat[stat.rfind(")") + 2 :].split()
        if fields[0] != "Z" and int(fields[2]) == pgid:
            members.append(int(entry.name))
    return members


def stop_dagster_dev(server: DagsterDev, timeout: float = STOP_TIMEOUT) -> dict[str, Any]:
    """SIGTERM the whole group, wait for it to empty, SIGKILL only what is still there."""
    pgid = server.pgid
    started = time.monotonic()
    with suppress(ProcessLookupError):
        os.killpg(pgid, signal.SIGTERM)
    with suppress(subprocess.TimeoutExpired):
        server.proc.wait(timeout=timeout)
    while _group_members(pgid) and time.monotonic() - started < timeout:
        time.sleep(0.25)
    leftover = _group_members(pgid)
    if leftover:
        with suppress(ProcessLookupError):
            os.killpg(pgid, signal.SIGKILL)
        with suppress(subprocess.TimeoutExpired):
            server.proc.wait(timeout=10)
        time.sleep(0.5)
    return {
        "stop_seconds": round(time.monotonic() - started, 1),
        "killed_after_sigterm": leftover,
        "group_alive": _group_members(pgid),
        "exit_code": server.proc.returncode,
    }


@contextmanager
def chromium(profile_dir: Path) -> Iterator[Any]:
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for flag in CHROMIUM_FLAGS:
        options.add_argument(flag)
    options.add_argument(f"--window-size={VIEWPORT[0]},{VIEWPORT[1]}")
    options.add_argument(f"--user-data-dir={profile_dir}")
    # Both paths are given, so Selenium Manager has nothing to download.
    driver = webdriver.Chrome(service=Service(str(CHROMEDRIVER)), options=options)
    driver.set_page_load_timeout(UI_TIMEOUT)
    # --window-size includes the (invisible) browser frame; pin the page's own viewport instead.
    driver.execute_cdp_cmd(
        "Emulation.setDeviceMetricsOverride",
        {"width": VIEWPORT[0], "height": VIEWPORT[1], "deviceScaleFactor": 1, "mobile": False},
    )
    try:
        yield driver
    finally:
        driver.quit()


class UI:
    """The few UI gestures the check needs, each waiting (bounded) for what it expects."""

    def __init__(self, driver: Any, base_url: str, out_dir: Path, report: Report) -> None:
        from selenium.common.exceptions import (
            NoSuchElementException,
            StaleElementReferenceException,
        )
        from selenium.webdriver.support.ui import WebDriverWait

        self.driver = driver
        self.base = base_url
        self.out_dir = out_dir
        self.report = report
        # React re-renders replace elements under us: a stale reference means "look again".
        self.wait = WebDriverWait(
            driver,
            UI_TIMEOUT,
            poll_frequency=0.25,
            ignored_exceptions=(NoSuchElementException, StaleElementReferenceException),
        )

    def until(self, condition: Any, what: str) -> Any:
        """WebDriverWait.until, failing with what was awaited (Selenium's own message is empty)."""
        from selenium.common.exceptions import TimeoutException

        try:
            return self.wait.until(condition)
        except TimeoutException:
            raise TimeoutError(f"UI: {what} not seen within {UI_TIMEOUT:.0f}s") from None

    def open(self, path: str) -> None:
        self.driver.get(self.base + path)
        self.dismiss_welcome()

    def dismiss_welcome(self) -> None:
        """A fresh profile gets the 'Join the Dagster community' dialog once; skip it."""
        from selenium.common.exceptions import StaleElementReferenceException
        from selenium.webdriver.common.by import By

        deadline = time.monotonic() + 4
        while time.monotonic() < deadline:
            buttons = self.driver.find_elements(By.XPATH, "//button[normalize-space()='Skip']")
            try:
                if buttons:
                    buttons[0].click()
                    return
            except StaleElementReferenceException:
                continue  # re-rendered between find and click: look again
            time.sleep(0.25)

    def find(self, xpath: str, root: Any = None) -> Any:
        from selenium.webdriver.common.by import By
        from selenium.webdriver.support import expected_conditions as ec

        if root is None:
            return self.until(ec.element_to_be_clickable((By.XPATH, xpath)), xpath)
        return self.until(lambda _: root.find_element(By.XPATH, xpath), xpath)

    def click(self, xpath: str, root: Any = None, *, scroll: bool = True) -> None:
        """Find and click, again if React re-rendered the element between the two."""
        from selenium.common.exceptions import (
            ElementClickInterceptedException,
            NoSuchElementException,
            StaleElementReferenceException,
        )
        from selenium.webdriver.common.by import By

        def attempt(_: Any) -> bool:
            try:
                element = (root or self.driver).find_element(By.XPATH, xpath)
                if scroll:
                    self.driver.execute_script(SCROLL_TO_CENTER, element)
                element.click()
            except (
                NoSuchElementException,
                StaleElementReferenceException,
                ElementClickInterceptedException,
            ):
                return False
            return True

        self.until(attempt, f"clickable {xpath}")

    def wait_still(self, xpath: str) -> None:
        """Until the element stops moving (the graph animates its layout and zoom)."""
        from selenium.common.exceptions import StaleElementReferenceException
        from selenium.webdriver.common.by import By

        last: dict[str, float] = {}

        def settled(_: Any) -> bool:
            nonlocal last
            try:
                rect = self.driver.find_element(By.XPATH, xpath).rect
            except StaleElementReferenceException:
                return False
            same = rect == last
            last = rect
            return same

        time.sleep(0.3)
        self.until(settled, f"{xpath} at rest")

    def shot(self, name: str) -> Path:
        path = self.out_dir / f"{name}.png"
        self.driver.save_screenshot(str(path))
        self.report.screenshots[name] = str(path)
        return path


def launch_sample_from_group(ui: UI) -> str:
    """Raw group -> Materialize all -> partition `sample` -> Launch 1 run; returns the run id."""
    ui.open("/locations/vlit_assets/asset-groups/raw")
    ui.find("//*[normalize-space()='raw__images']")
    ui.shot("01_raw_group")
    ui.click("//button[contains(normalize-space(), 'Materialize all')]")
    # The dialog re-renders while it loads partitions: address its parts by absolute XPath each
    # time instead of holding an element that may go stale.
    dialog = "//*[@role='dialog'][contains(., 'Launch runs to materialize')]"
    ui.find(dialog)
    ui.click(f"{dialog}//*[normalize-space()='Select a partition or create one']")
    ui.click(f"//*[@role='menuitem'][contains(normalize-space(.), '{PARTITION}')]")
    # Close the partition menu by clicking the dialog's title, not Escape (that closes the dialog).
    ui.click(f"{dialog}//*[contains(text(), 'Launch runs to materialize')]")
    ui.find(f"{dialog}//button[normalize-space()='Launch 1 run']")
    ui.until(
        lambda d: not d.find_elements("css selector", ".dagster-popover[data-state='open']"),
        "the partition menu closed",
    )
    time.sleep(0.5)  # the menu fades out
    ui.shot("02_launch_dialog")
    ui.click(f"{dialog}//button[normalize-space()='Launch 1 run']")
    ui.find("//*[contains(normalize-space(), 'Launched run')]")
    ui.click(
        "//*[contains(normalize-space(), 'Launched run')]//*[self::a or self::button]"
        "[normalize-space()='View']"
    )
    ui.until(lambda d: "/runs/" in d.current_url, "the run page")
    return ui.driver.current_url.rsplit("/runs/", 1)[1].split("?")[0].split("/")[0]


def run_page_status(ui: UI) -> str | None:
    from selenium.webdriver.common.by import By

    for state in TERMINAL_RUN_STATES:
        if ui.driver.find_elements(By.XPATH, f"//*[normalize-space(text())='{state}']"):
            return state
    return None


def wait_for_run(ui: UI, timeout: float = RUN_TIMEOUT) -> tuple[str, float]:
    """Poll the run page until its status tag is terminal; return (status, seconds)."""
    started = time.monotonic()
    while time.monotonic() - started < timeout:
        status = run_page_status(ui)
        if status:
            return status, time.monotonic() - started
        time.sleep(1.0)
    raise TimeoutError(f"run page showed no terminal status within {timeout:.0f}s")


def graphql_run_status(server: DagsterDev, run_id: str, timeout: float = 20.0) -> str:
    """The run's status as the API reports it, once terminal (the page may redraw first)."""
    query = "query($id: ID!) { runOrError(runId: $id) { ... on Run { status } } }"
    deadline = time.monotonic() + timeout
    while True:
        status = graphql(server, query, {"id": run_id})["data"]["runOrError"].get("status", "?")
        if status in ("SUCCESS", "FAILURE", "CANCELED") or time.monotonic() > deadline:
            return status
        time.sleep(0.5)


def open_plots(ui: UI, asset: str = PLOT_ASSET) -> None:
    """Asset overview -> Metadata -> Plots -> Events: metadata values across materializations."""
    ui.open(f"/assets/{asset}?view=overview")
    ui.click("//button[normalize-space()='Plots']")
    ui.click("//button[normalize-space()='Events']")
    ui.find("//*[normalize-space(text())='dagster/row_count']")
    ui.until(lambda d: d.find_elements("css selector", "canvas, svg.recharts-surface"), "a chart")
    time.sleep(1.0)  # the chart animates in


def open_expanded_graph(ui: UI) -> int:
    """Global lineage, asset list hidden, every group expanded, one zoom step in so each card
    shows its name and partition fill; returns how many cards say '100% filled'."""
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys

    ui.open("/asset-groups")
    ui.click("//input[@placeholder='Jump to…']/following::button[1]")
    # Alt+E is the UI's own "Expand all groups" shortcut.
    ActionChains(ui.driver).key_down(Keys.ALT).send_keys("e").key_up(Keys.ALT).perform()
    group_title = "//*[normalize-space(text())='raw']"
    ui.find(group_title)
    ui.wait_still(group_title)
    ui.click("//button[.//*[@aria-label='zoom_in']]", scroll=False)
    for name in GRAPH_ASSETS:
        ui.find(f"//*[normalize-space(text())='{name}']")
    ui.wait_still(group_title)
    return len(ui.driver.find_elements(By.XPATH, "//*[normalize-space(text())='100% filled']"))


def _browser_steps(ui: UI, server: DagsterDev, report: Report) -> None:
    run_id = launch_sample_from_group(ui)
    report.facts["run_id"] = run_id
    report.record("launch from UI", True, f"raw group, partition {PARTITION}: run {run_id[:8]}")
    status, seconds = wait_for_run(ui)
    report.facts["run_status"] = status
    report.facts["run_seconds"] = round(seconds, 1)
    ui.shot("03_run_page")
    api_status = graphql_run_status(server, run_id)
    report.facts["run_status_graphql"] = api_status
    report.record(
        "run page shows Success",
        status == "Success" and api_status == "SUCCESS",
        f"page: {status}, graphql: {api_status}, {seconds:.0f}s after launch",
    )
    open_plots(ui)
    ui.shot("04_metadata_plots")
    report.record("metadata plots", True, f"{PLOT_ASSET}: Overview > Metadata > Plots > Events")
    filled = open_expanded_graph(ui)
    ui.shot("05_asset_graph")
    report.facts["graph_cards_filled"] = filled
    report.record(
        "asset graph",
        filled >= 7,
        f"global lineage expanded, {', '.join(GRAPH_ASSETS)} shown; {filled} cards 100% filled",
    )


def _safe_shot(ui: UI | None, name: str) -> None:
    if ui is None:
        return
    # A failing screenshot must not hide the error that led here.
    with suppress(Exception):
        ui.shot(name)


def run_ui_check(
    out_dir: Path,
    *,
    port: int | None = None,
    all_stages: bool = False,
    work_dir: Path | None = None,
) -> dict[str, Any]:
    """The whole check; never leaves a server running. Returns steps, screenshots and facts.

    ``all_stages`` materializes generated and scored too before the UI run (for the docs shot).
    ``work_dir`` holds DAGSTER_HOME, the DuckDB file, outputs and logs (default: a new temp
    dir, removed when every step passed).
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    report = Report()
    started = time.monotonic()
    work = Path(work_dir or tempfile.mkdtemp(prefix="vlit-ui-check-"))
    work.mkdir(parents=True, exist_ok=True)
    port = port or free_port()
    report.facts.update({"port": port, "work_dir": str(work)})
    server: DagsterDev | None = None
    ui: UI | None = None
    try:
        env = isolated_env(work)
        stage = "scored" if all_stages else "raw"
        report.record(f"vlit run --stage {stage}", True, materialize_sample(env, work, stage))
        server = start_dagster_dev(env, work, port)
        report.facts["pgid"] = server.pgid
        ready = wait_for_server(server)
        report.record("dagster dev up", True, f"{server.url} in {ready:.1f}s")
        with chromium(work / "chromium-profile") as driver:
            ui = UI(driver, server.url, out_dir, report)
            try:
                _browser_steps(ui, server, report)
            except Exception:
                _safe_shot(ui, "99_error")
                raise
    except Exception as exc:  # noqa: BLE001 - reported as a failed step, then re-checked below
        first_line = (str(exc).strip().splitlines() or [""])[0]
        report.record("error", False, f"{type(exc).__name__}: {first_line}"[:600])
    finally:
        if server is not None:
            stopped = stop_dagster_dev(server)
            free = port_is_free(port)
            report.facts.update(stopped, port_free=free, server_log=str(server.log_path))
            report.record(
                "server stopped",
                not stopped["group_alive"] and free,
                f"group {server.pgid} gone in {stopped['stop_seconds']}s, "
                f"SIGKILLed {len(stopped['killed_after_sigterm'])}, port {port} free: {free}",
            )
    report.facts["seconds"] = round(time.monotonic() - started, 1)
    result = report.as_dict()
    if work_dir is None and result["ok"]:
        shutil.rmtree(work, ignore_errors=True)
        result["work_dir"] = result["server_log"] = None
    return result


def print_table(result: dict[str, Any]) -> None:
    width = max(len(s["name"]) for s in result["steps"])
    for step in result["steps"]:
        print(f"{'PASS' if step['ok'] else 'FAIL'}  {step['name']:<{width}}  {step['detail']}")
    print()
    for name, path in result["screenshots"].items():
        print(f"screenshot  {name:<20} {path}")
    print(f"\n{'OK' if result['ok'] else 'FAILED'} in {result['seconds']}s")
    if not result["ok"]:
        print(f"kept for inspection: {result['work_dir']} (server log: {result.get('server_log')})")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, help="screenshot folder (default: a new temp dir)")
    parser.add_argument("--port", type=int, help="port for dagster dev (default: a free one)")
    parser.add_argument("--docs", type=Path, help="also copy the asset-graph screenshot here")
    args = parser.parse_args(argv)
    for binary in (CHROMIUM, CHROMEDRIVER):
        if not binary.exists():
            print(f"ui_check: {binary} not found (apt-get install chromium chromium-driver)")
            return 2
    out_dir = args.out or Path(tempfile.mkdtemp(prefix="vlit-ui-shots-"))
    result = run_ui_check(out_dir, port=args.port, all_stages=args.docs is not None)
    print_table(result)
    graph = result["screenshots"].get("05_asset_graph")
    if args.docs and graph and result["ok"]:
        args.docs.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(graph, args.docs)
        print(f"copied {graph} -> {args.docs}")
    return 0 if result["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
