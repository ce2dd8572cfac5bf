"""The web console (``rankwise serve --ui``) in a real browser: Debian's headless Chromium driven through
its chromedriver (Selenium), against a real server process with keys, a registry, a feedback store and a
monitoring history.

What a person sees is checked as they would see it — both scores on every result, a thumbs click that
lands in the feedback store, a compare page that highlights what moved, a quality chart with its points
and alarm — and each page is saved as a screenshot under ``build/test-artifacts/console/``. What the
console must refuse is checked with a plain HTTP client too: a search-only key cannot roll back production
or see the quality pages, and a form without its CSRF token changes nothing.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from test_monitoring import QUERIES, REMOVED, record
from test_serving import Server, _build_model

from conftest import KB
from rankwise.errors import RankwiseError
from rankwise.evaluation.labeling import SheetRow, build_sheet, merge_sheets, read_sheet, write_sheet
from rankwise.feedback.store import SQLiteFeedbackStore
from rankwise.index import Index
from rankwise.monitoring.history import SQLiteMonitorHistory
from rankwise.pipeline import Pipeline
from rankwise.registry import Registry
from rankwise.serving.auth import KeyStore
from rankwise.serving.console.labelling import Annotator, LabelDesk, Progress

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CHROMEDRIVER = shutil.which("chromedriver")
pytestmark = pytest.mark.skipif(CHROMIUM is None or CHROMEDRIVER is None,
                                reason="Debian chromium and chromium-driver are not installed "
                                       "(apt-get install chromium chromium-driver)")
ARTIFACTS = Path(__file__).resolve().parent.parent / "build" / "test-artifacts" / "console"
QUERY = "how do contractors reset MFA"


@pytest.fixture(scope="module")
def setup(kb_index: Index, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    root = tmp_path_factory.mktemp("console")
    registry = Registry(root / "registry")
    registry.register(_build_model(root / "a", seed=0), {"note": "first"})
    registry.promote("v1", forced=True)
    registry.register(_build_model(root / "b", seed=1), {"note": "second"})
    registry.promote("v2", forced=True)
    keys = KeyStore(root / "keys.json")
    tokens: dict[str, Any] = {}
    for name, roles in (("admin", ["admin"]), ("searcher", ["search"])):
        key, token = keys.add(roles, name=name)
        tokens[name], tokens[f"{name}_id"] = token, key.id
    degraded = Index.build([d for d in KB if d.id not in REMOVED], root / "degraded")
    with SQLiteMonitorHistory(root / "history.sqlite") as history:  # two alike runs, then a drop: one alarm
        for run in (record(kb_index), record(kb_index), record(degraded)):
            history.append(run)
    gold = root / "gold.jsonl"  # the gate's gold set: enough queries for its minimum
    gold.write_text("".join(json.dumps({"query_id": f"{qid}{suffix}", "query": f"{text}{suffix}", "document_id": doc,
                                        "label": 1}) + "\n"
                            for qid, (text, doc, _) in QUERIES.items() for suffix in ("", " please")))
    rows = build_sheet(Pipeline(kb_index, first_stage="bm25"), {"q1": "reset MFA", "q2": "annual refund"}, k=3)
    write_sheet(rows, root / "sheets" / "support")
    return {"root": root, "registry": registry.root, "keys": root / "keys.json", "tokens": tokens,
            "feedback": root / "feedback.sqlite", "history": root / "history.sqlite", "sheets": root / "sheets",
            "sheet_rows": rows, "gold": gold}


@pytest.fixture(scope="module")
def server(kb_index: Index, setup: dict[str, Any]) -> Iterator[Server]:
    srv = Server(["--index", str(kb_index.path), "--reranker", "production", "--registry", str(setup["registry"]),
                  "--backend", "torch", "--keys", str(setup["keys"]), "--feedback-db", str(setup["feedback"]),
                  "--log-queries", "text", "--audit", str(setup["root"] / "audit.sqlite"),
                  "--monitor-history", str(setup["history"]), "--shadow", "v1", "--shadow-share", "1",
                  "--monitor-every", "24h", "--monitor-goldset", str(setup["gold"]),
                  "--ui", "--label-dir", str(setup["sheets"])],
                 setup["root"] / "server.log")
    yield srv
    srv.stop()


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    os.environ.setdefault("SE_OFFLINE", "true")  # never let Selenium Manager look for a driver online
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM  # type: ignore[assignment]
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                 "--window-size=1280,1100", "--disable-background-networking"):
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    driver.set_page_load_timeout(120)
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    yield driver
    driver.quit()


def _shot(driver: Any, name: str) -> None:
    """Save the whole page (the window grown to its height) as ``name``.png."""
    height = driver.execute_script("return document.documentElement.scrollHeight")
    driver.set_window_size(1280, max(700, min(int(height) + 40, 4000)))
    driver.save_screenshot(str(ARTIFACTS / f"{name}.png"))
    driver.set_window_size(1280, 1100)


def _wait_for(driver: Any, selector: str, text: str) -> None:
    """Wait until the element at ``selector`` shows ``text`` (a key press navigates without Selenium waiting)."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions
    from selenium.webdriver.support.wait import WebDriverWait

    WebDriverWait(driver, 30).until(expected_conditions.text_to_be_present_in_element((By.CSS_SELECTOR, selector), text))


def _sign_in(driver: Any, server: Server, token: str) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.wait import WebDriverWait

    driver.delete_all_cookies()
    driver.get(f"{server.url}/ui/search")
    assert "/ui/login" in driver.current_url  # nothing is shown before a sign-in
    driver.find_element(By.ID, "key").send_keys(token)
    driver.find_element(By.CSS_SELECTOR, "form button[type=submit]").click()
    _wait_for(driver, "nav", "Search")
    WebDriverWait(driver, 30).until(lambda d: d.current_url.endswith("/ui/search"))


def test_a_signed_in_expert_searches_sees_both_scores_and_gives_feedback(
        server: Server, setup: dict[str, Any], browser: Any) -> None:
    from selenium.webdriver.common.by import By

    driver = browser
    driver.get(f"{server.url}/ui/search")
    assert "/ui/login" in driver.current_url
    driver.find_element(By.ID, "key").send_keys("rk_not_a_key")
    driver.find_element(By.CSS_SELECTOR, "form button[type=submit]").click()
    _wait_for(driver, "main", "not valid")
    _shot(driver, "login")
    _sign_in(driver, server, setup["tokens"]["admin"])
    box = driver.find_element(By.ID, "q")
    box.send_keys(QUERY)
    box.submit()
    _wait_for(driver, "main", "results · request")
    rows = driver.find_elements(By.CSS_SELECTOR, "tr.result")
    assert len(rows) >= 5, driver.find_element(By.TAG_NAME, "main").text
    for row in rows:  # every result shows the first stage's signals and both reranker scores
        bm25, dense, fused, reranker = (c.text for c in row.find_elements(By.CSS_SELECTOR, "td.num")[1:5])
        assert re.match(r"#\d+\n[\d.]+", bm25) or bm25 == "–"
        assert (re.match(r"#\d+\n-?[\d.]+", dense) or dense == "–") and re.match(r"#\d+\n[\d.]+", fused)
        assert re.fullmatch(r"[01]\.\d{3}\nraw -?\d+\.\d{3}", reranker), reranker
    assert driver.find_elements(By.CSS_SELECTOR, "tr.result .up, tr.result .down")  # the reranker moved some
    provenance = driver.find_element(By.CSS_SELECTOR, ".provenance").text
    assert "reranker\nv2 " in provenance and "8 scored" in provenance, provenance
    _shot(driver, "search")
    second = rows[1].get_attribute("data-doc-id")
    rows[1].find_element(By.CSS_SELECTOR, "button.thumbs_up").click()
    _wait_for(driver, "main", f"thumbs up on {second} stored")  # a click navigates without Selenium waiting
    with SQLiteFeedbackStore(setup["feedback"]) as store:
        store.flush()
        events = store.events()
    assert [(e.doc_id, e.signal) for e in events] == [(second, "thumbs_up")]


def test_compare_highlights_the_documents_the_reranker_moved(server: Server, setup: dict[str, Any],
                                                            browser: Any) -> None:
    from selenium.webdriver.common.by import By

    driver = browser
    _sign_in(driver, server, setup["tokens"]["admin"])
    driver.get(f"{server.url}/ui/compare?{httpx.QueryParams({'q': QUERY, 'a': 'hybrid+reranker', 'b': 'hybrid'})}")
    moved = driver.find_elements(By.CSS_SELECTOR, "ol.compare li.moved")
    assert moved and all(li.value_of_css_property("background-color") != "rgba(0, 0, 0, 0)" for li in moved)
    agreement = driver.find_element(By.CSS_SELECTOR, ".agreement").text
    assert re.search(r"\d+/\d+ documents in both lists, [1-9]\d* at another rank, Kendall's τ", agreement)
    _shot(driver, "compare")
    # a version the server does not serve (v1; production is v2), loaded for the comparison
    driver.get(f"{server.url}/ui/compare?{httpx.QueryParams({'q': QUERY, 'a': 'hybrid+v1', 'b': 'hybrid+reranker'})}")
    headings = [h.text for h in driver.find_elements(By.CSS_SELECTOR, ".columns h2")]
    assert headings == ["hybrid+v1", "hybrid+reranker"]
    assert driver.find_elements(By.CSS_SELECTOR, "ol.compare li.moved"), "two different models, same order"


def test_the_rollout_page_reports_the_shadow_with_its_decision_rule(server: Server, setup: dict[str, Any],
                                                                     browser: Any) -> None:
    from selenium.webdriver.common.by import By

    driver = browser
    _sign_in(driver, server, setup["tokens"]["admin"])
    for _ in range(3):  # searches the shadow scores too (share 1)
        driver.get(f"{server.url}/ui/search?{httpx.QueryParams({'q': QUERY})}")
    deadline = time.monotonic() + 60
    while True:  # the shadow scores off the request path: its records land shortly after the answers
        driver.get(f"{server.url}/ui/rollout")
        sections = driver.find_elements(By.CSS_SELECTOR, "section.report")
        if sections or time.monotonic() > deadline:
            break
        time.sleep(1)
    text = sections[0].text
    assert "shadow v1 vs production v2" in text and "Kendall's tau" in text and "covers" in text
    assert re.match(r"(switch|keep|inconclusive): ", sections[0].find_element(By.CSS_SELECTOR, ".decision").text)
    _shot(driver, "rollout")


def test_the_quality_page_plots_every_run_and_marks_the_alarm(server: Server, setup: dict[str, Any],
                                                               browser: Any) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.wait import WebDriverWait

    driver = browser
    _sign_in(driver, server, setup["tokens"]["admin"])
    driver.get(f"{server.url}/ui/quality")
    chart = driver.find_element(By.CSS_SELECTOR, "svg.chart")
    points = chart.find_elements(By.CSS_SELECTOR, "circle.point")
    assert len(points) == 3 and len(chart.find_elements(By.CSS_SELECTOR, "circle.alarm")) == 1
    values = [float(p.get_attribute("data-value")) for p in points]
    assert values[2] < values[1]  # the degraded index's run is the low one
    assert chart.size["width"] > 400 and "1 alarms" in driver.find_element(By.TAG_NAME, "main").text
    with server.client(setup["tokens"]["admin"]) as client:  # traffic for the drift charts
        for i in range(24):
            assert client.post("/v1/search", json={"query": f"{QUERY} {i}", "k": 5}).status_code == 200
    driver.get(f"{server.url}/ui/quality")
    drift = driver.find_elements(By.CSS_SELECTOR, "figure.drift")
    assert {f.get_attribute("data-signal") for f in drift} >= {"query_words", "reranker_top1", "rank_change"}
    assert all(len(f.find_elements(By.CSS_SELECTOR, "circle.point")) >= 2 for f in drift)
    _shot(driver, "quality")
    driver.find_element(By.LINK_TEXT, "1-3 words").click()  # a slice's history: one point per run
    _wait_for(driver, "main", "A slice's value opens its history")
    WebDriverWait(driver, 30).until(lambda d: d.find_elements(By.CSS_SELECTOR, "figure.slice-chart"))
    assert len(driver.find_elements(By.CSS_SELECTOR, "figure.slice-chart circle.point")) == 3
    driver.find_element(By.PARTIAL_LINK_TEXT, "full check report").click()
    _wait_for(driver, ".banner", "ALARM")
    assert "ALARM" in driver.find_element(By.CSS_SELECTOR, ".banner").text
    assert all(i.size["width"] > 200 for i in driver.find_elements(By.CSS_SELECTOR, "img.plot"))


def test_an_admin_rolls_back_from_the_page_and_the_history_says_who(server: Server, setup: dict[str, Any],
                                                                      browser: Any) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.select import Select

    driver = browser
    _sign_in(driver, server, setup["tokens"]["admin"])
    driver.get(f"{server.url}/ui/models")
    assert [r.text.split()[0] for r in driver.find_elements(By.CSS_SELECTOR, "tbody tr.production")] == ["v2"]
    _shot(driver, "models")
    # the gate runs first and its result is shown; only a pass offers the promotion
    Select(driver.find_element(By.NAME, "version")).select_by_visible_text("v1")
    driver.find_element(By.CSS_SELECTOR, "form[action='/ui/models/gate'] button").click()
    _wait_for(driver, "h1", "Promotion gate: v1")
    verdict = driver.find_element(By.CSS_SELECTOR, ".gate").text
    assert re.search(r"nDCG@5\nv1 [\d.]+ vs v2 [\d.]+ \([+-][\d.]+%, required > \+5\.0%\)", verdict), verdict
    assert "over 48 queries" in verdict
    offered = driver.find_elements(By.CSS_SELECTOR, "form[action='/ui/models/promote']")
    assert bool(offered) == ("PASSED" in verdict) and (offered or "refused:" in verdict)
    _shot(driver, "gate")
    driver.get(f"{server.url}/ui/models")
    driver.find_element(By.CSS_SELECTOR, "form[action='/ui/models/rollback'] button").click()
    _wait_for(driver, "main", "production rolled back to v1")
    assert Registry(setup["registry"]).aliases()["production"] == "v1"
    assert Registry(setup["registry"]).history()[-1]["by"] == setup["tokens"]["admin_id"]


def test_an_expert_labels_a_sheet_with_the_keyboard_resumes_and_the_labels_import(
        server: Server, setup: dict[str, Any], browser: Any) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys
    from selenium.webdriver.support.wait import WebDriverWait

    driver = browser
    _sign_in(driver, server, setup["tokens"]["admin"])
    driver.get(f"{server.url}/ui/label")
    expected = setup["sheet_rows"]
    total = len(expected)
    assert total >= 3 and f"0/{total}" in driver.find_element(By.TAG_NAME, "main").text
    driver.find_element(By.LINK_TEXT, "start").click()
    WebDriverWait(driver, 30).until(lambda d: d.find_elements(By.CSS_SELECTOR, ".labelling .query"))
    assert driver.find_element(By.CSS_SELECTOR, ".query").text == expected[0].query
    driver.find_element(By.TAG_NAME, "body").send_keys("2")  # a digit labels the row and moves on
    _wait_for(driver, ".progress-count", f"1/{total}")
    notes = driver.find_element(By.NAME, "notes")
    notes.send_keys("outdated page", Keys.ENTER)  # Enter in the notes must not pick a label
    time.sleep(1)  # had Enter submitted a label, the page would have moved on by now
    assert driver.find_element(By.CSS_SELECTOR, ".progress-count").text == f"1/{total}"
    driver.find_element(By.CSS_SELECTOR, ".query").click()  # out of the notes box: digits label again
    driver.find_element(By.TAG_NAME, "body").send_keys("0")
    _wait_for(driver, ".progress-count", f"2/{total}")
    _shot(driver, "label")
    driver.get(f"{server.url}/ui/label")  # a closed browser resumes where the annotator stopped
    assert "resume at row 3" in driver.find_element(By.TAG_NAME, "main").text
    saved = read_sheet(setup["sheets"] / "support" / "by" / f"admin-{setup['tokens']['admin_id']}.jsonl")
    assert [(r.document_id, r.label, r.annotator) for r in saved] == [
        (expected[0].document_id, 2, "admin"), (expected[1].document_id, 0, "admin")]
    assert saved[1].notes == "outdated page"
    merged = merge_sheets([saved])  # what `rankwise label-import` does with it
    assert len(merged.goldset.judgements) == 2


def _console_client(server: Server, token: str | None) -> tuple[httpx.Client, str]:
    """A plain HTTP client signed in to the console (when ``token``), and its session's CSRF token."""
    client = httpx.Client(base_url=server.url, timeout=120)
    csrf = re.search(r'name="csrf_token" value="([^"]+)"', client.get("/ui/login").text).group(1)  # type: ignore[union-attr]
    if token is not None:
        reply = client.post("/ui/login", data={"csrf_token": csrf, "key": token, "next": "/ui/models"})
        assert reply.status_code == 303
        csrf = re.search(r'name="csrf_token" value="([^"]+)"', client.get("/ui/models").text).group(1)  # type: ignore[union-attr]
    return client, csrf


def test_a_search_only_key_cannot_roll_back_or_see_quality_and_forms_need_their_token(
        server: Server, setup: dict[str, Any]) -> None:
    before = Registry(setup["registry"]).history()
    client, csrf = _console_client(server, setup["tokens"]["searcher"])
    with contextlib.closing(client):
        page = client.get("/ui/models")
        assert page.status_code == 200 and "/ui/models/rollback" not in page.text
        refused = client.post("/ui/models/rollback", data={"csrf_token": csrf})
        assert refused.status_code == 403 and "needs an admin key" in refused.text
        for action in ("gate", "promote"):
            assert client.post(f"/ui/models/{action}", data={"csrf_token": csrf, "version": "v1"}).status_code == 403
        thumbs = client.post("/ui/feedback", data={"csrf_token": csrf, "request_id": "r", "doc_id": "d",
                                                   "signal": "thumbs_up"})
        assert thumbs.status_code == 403 and "feedback role" in thumbs.text  # as /v1/feedback would refuse
        loads = client.get("/ui/compare", params={"q": "reset MFA", "a": "hybrid+v1", "b": "hybrid"})
        assert loads.status_code == 409 and "needs an admin key" in loads.text
        bad = client.get("/ui/search", params={"q": "reset MFA", "k": "ten"})
        assert bad.status_code == 409 and "k must be a whole number" in bad.text and "<html" in bad.text
        assert client.get("/ui/quality").status_code == 403
    admin, admin_csrf = _console_client(server, setup["tokens"]["admin"])
    with contextlib.closing(admin):
        ungated = admin.post("/ui/models/promote", data={"csrf_token": admin_csrf, "version": "v1"})
        assert ungated.status_code == 409 and "run the gate for this version first" in ungated.text
        no_token = admin.post("/ui/models/rollback", data={})
        wrong = admin.post("/ui/models/rollback", data={"csrf_token": csrf})  # another session's token
        assert no_token.status_code == wrong.status_code == 403 and "security token" in no_token.text
        thumbs = admin.post("/ui/feedback", data={"request_id": "x", "doc_id": "y", "signal": "thumbs_up"})
        assert thumbs.status_code == 403
        assert admin.get("/ui/search", params={"q": "x"}).status_code == 200  # the session itself still works
    assert Registry(setup["registry"]).history() == before  # nothing changed
    anonymous = httpx.Client(base_url=server.url, timeout=60)
    with anonymous:
        first = anonymous.get("/ui/search", params={"q": "reset MFA", "first_stage": "bm25"}, follow_redirects=False)
        assert first.status_code == 303  # and back to the same search after signing in
        assert first.headers["location"] == "/ui/login?next=%2Fui%2Fsearch%3Fq%3Dreset%2BMFA%26first_stage%3Dbm25"
        cookie = first.headers["set-cookie"].lower()
        assert "httponly" in cookie and "samesite=strict" in cookie
        assert anonymous.get("/ui/static/console.css").status_code == 200  # assets are served here, no CDN


def test_misranked_pairs_show_both_documents_and_become_a_labelling_sheet(
        server: Server, setup: dict[str, Any], browser: Any) -> None:
    from selenium.webdriver.common.by import By

    with server.client(setup["tokens"]["admin"]) as client:  # users reject the top result and like the third
        answer = client.post("/v1/search", json={"query": "annual plan refund policy", "k": 5}).json()
        top, third = answer["results"][0]["doc_id"], answer["results"][2]["doc_id"]
        for event_id, signal, doc in (("m1", "thumbs_down", top), ("m2", "thumbs_up", third)):
            reply = client.post("/v1/feedback", json={"request_id": answer["request_id"], "event_id": event_id,
                                                      "signal": signal, "doc_id": doc})
            assert reply.status_code == 201, reply.text
    driver = browser
    _sign_in(driver, server, setup["tokens"]["admin"])
    driver.get(f"{server.url}/ui/misranked")
    pairs = [p for p in driver.find_elements(By.CSS_SELECTOR, "section.pair")
             if "annual plan refund policy" in p.find_element(By.CSS_SELECTOR, ".query").text]
    assert pairs, driver.find_element(By.TAG_NAME, "main").text
    above, preferred = (s.text for s in pairs[0].find_elements(By.CSS_SELECTOR, ".side"))
    assert top in above and "rank 1" in above and third in preferred and "rank 3" in preferred
    _shot(driver, "misranked")
    driver.find_element(By.CSS_SELECTOR, "form[action='/ui/misranked/sheet'] button").click()
    _wait_for(driver, "main", "is ready in Label")
    made = re.search(r"sheet (misranked-[\d-]+) with (\d+) rows", driver.find_element(By.CSS_SELECTOR, ".ok").text)
    assert made is not None
    rows = read_sheet(setup["sheets"] / made.group(1) / "labels.jsonl")
    assert len(rows) == int(made.group(2)) and {top, third} <= {r.document_id for r in rows}
    driver.get(f"{server.url}/ui/label")
    assert made.group(1) in driver.find_element(By.TAG_NAME, "main").text


def test_a_sheet_shows_a_grouped_key_only_its_rows_and_labels_land_by_row_identity(tmp_path: Path) -> None:
    """Without a browser: what the labelling pages read and write for keys with groups and unnamed keys."""
    rows = [SheetRow(q, f"query {q}", rank, doc, doc.title(), "text") for q in ("q1", "q2")
            for rank, doc in enumerate(("public", "finance-only"), start=1)]
    write_sheet(rows, tmp_path / "team")
    desk = LabelDesk(tmp_path)
    unnamed, other = Annotator.of_key("", "k1"), Annotator.of_key("", "k2")
    assert unnamed.file != other.file and unnamed.name == "k1"  # two unnamed keys never share a file
    visible = frozenset({"public"})
    assert [r.document_id for r in desk.labelled("team", unnamed, visible)] == ["public", "public"]
    desk.save("team", unnamed, ("q2", "public"), 3, "best", visible)
    with pytest.raises(RankwiseError, match="no row for query q1 and document finance-only"):
        desk.save("team", unnamed, ("q1", "finance-only"), 1, None, visible)  # hidden: not labellable
    assert desk.progress("team", unnamed, visible) == Progress("team", 2, 1, 0)
    assert desk.progress("team", other) == Progress("team", 4, 0, 0)
    saved = read_sheet(tmp_path / "team" / "by" / f"{unnamed.file}.jsonl")
    assert [(r.query_id, r.document_id, r.label, r.annotator) for r in saved] == [("q2", "public", 3, "k1")]
