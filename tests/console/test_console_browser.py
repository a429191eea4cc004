"""The web console in a real browser: headless Chromium (Debian's `chromium` and
`chromium-driver`) driven by selenium, against a whole stack.

One stack for the module: records are produced over gRPC (one of them carries markup in its
key, value and a header), a confluent-kafka consumer group commits known offsets and stays a
member, and the sql service runs a materialized view. Then each page is opened as a person
would, and the test asserts what the browser shows: topic names and offsets, record values in
each format (the markup shown as text, never run), the group's members and exact lag, the cost
figure, the query listed and an ad-hoc SELECT's rows; the charts get lines once sampled.

Screenshots go to the test's tmp_path; with STREAMHOUSE_SAVE_SCREENSHOTS=1 they are also copied
into docs/console/ (how the README's pictures are made).
"""

from __future__ import annotations

import json
import os
import pathlib
import shutil
import threading
import time
import urllib.request
from collections.abc import Iterator

import pytest
from confluent_kafka import Consumer, TopicPartition
from selenium import webdriver
from selenium.common.exceptions import NoAlertPresentException, WebDriverException
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.remote.webelement import WebElement
from selenium.webdriver.support.ui import Select, WebDriverWait

from sql.service_client import SqlClient
from streamhouse.client import Client, Record
from streamhouse.testing import Stack, wait_until

REPO = pathlib.Path(__file__).resolve().parents[2]
EVIL = "<script>alert('x')</script>"
PER_PARTITION = 20
COMMITTED = {0: 12, 1: 5}  # the group's committed offsets: lag (20-12) + (20-5) = 23
LAG = sum(PER_PARTITION - c for c in COMMITTED.values())
DEADLINE_S = 60.0


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    env = {"STREAMHOUSE_CONSOLE_SAMPLE_MS": "500"}
    with Stack(tmp_path_factory.mktemp("console") / "data", env=env) as running:
        yield running


def record(i: int) -> Record:
    """Record i of a partition: JSON values; the first carries markup everywhere."""
    if i == 0:
        value = {"user": EVIL, "amount": 0}
        return Record(key=EVIL.encode(), value=json.dumps(value).encode(),
                      headers=[("source", EVIL.encode())])  # fmt: skip
    value = {"user": f"user-{i % 3}", "amount": i}
    return Record(
        key=f"user-{i % 3}".encode(), value=json.dumps(value).encode(), headers=[("source", b"web")]
    )


def produce(client: Client, numbers: range) -> None:
    for p in range(2):
        client.produce_batch("orders", [record(i) for i in numbers], partition=p)


def page_source(stack: Stack, path: str) -> str:
    try:
        with urllib.request.urlopen(url(stack, path), timeout=10) as response:
            return response.read().decode()
    except OSError:
        return ""


@pytest.fixture(scope="module")
def populated(stack: Stack) -> Iterator[None]:
    """Topic `orders` (2 partitions x 20 JSON records), group `billing` with one live member
    and committed offsets COMMITTED, view `totals` over stream `orders_s`."""
    with Client(stack.grpc_address) as client:
        client.create_topic("orders", partitions=2)
        half = PER_PARTITION // 2
        produce(client, range(half))
        # The second half after the console has sampled the first: records/s moves.
        wait_until(
            lambda: "orders (now " in page_source(stack, "/topics"),
            DEADLINE_S,
            "the console sampled topic orders twice",
        )
        produce(client, range(half, PER_PARTITION))
    consumer = Consumer(
        {
            "bootstrap.servers": stack.kafka_address,
            "group.id": "billing",
            "client.id": "billing-worker",
            "auto.offset.reset": "earliest",
            "enable.auto.commit": False,
        }
    )
    consumer.subscribe(["orders"])
    deadline = time.monotonic() + DEADLINE_S
    while len(consumer.assignment()) < 2:
        assert time.monotonic() < deadline, "the consumer got no assignment"
        consumer.poll(0.2)
    consumer.commit(
        offsets=[TopicPartition("orders", p, o) for p, o in COMMITTED.items()], asynchronous=False
    )
    stop = threading.Event()

    def keep_member() -> None:  # librdkafka heartbeats itself; poll keeps max.poll.interval
        while not stop.is_set():
            consumer.poll(0.2)

    # Pause before the first poll: the consumer holds the partitions without reading on.
    consumer.pause(consumer.assignment())
    member = threading.Thread(target=keep_member, daemon=True)
    member.start()
    stack.wait_sql_ready()
    with SqlClient(stack.sql_address) as sql:
        sql.execute("CREATE STREAM orders_s (user VARCHAR, amount BIGINT) WITH (topic = 'orders')")
        sql.execute(
            "CREATE MATERIALIZED VIEW totals AS SELECT user, count(*) AS n, sum(amount) AS total "
            "FROM orders_s GROUP BY user"
        )
    try:
        yield
    finally:
        stop.set()
        member.join(10)
        consumer.close()


@pytest.fixture(scope="module")
def browser() -> Iterator[webdriver.Chrome]:
    options = webdriver.ChromeOptions()
    options.binary_location = shutil.which("chromium") or "/usr/bin/chromium"
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                "--window-size=1280,900", "--hide-scrollbars"):  # fmt: skip
        options.add_argument(arg)
    service = Service(shutil.which("chromedriver") or "/usr/bin/chromedriver")
    driver = webdriver.Chrome(options=options, service=service)
    driver.set_page_load_timeout(60)
    try:
        yield driver
    finally:
        driver.quit()


class Shots:
    def __init__(self, folder: pathlib.Path) -> None:
        self.folder = folder
        self.save = os.environ.get("STREAMHOUSE_SAVE_SCREENSHOTS") == "1"

    def take(self, driver: webdriver.Chrome, name: str) -> pathlib.Path:
        path = self.folder / f"{name}.png"
        assert driver.save_screenshot(str(path)), f"no screenshot {path}"
        assert path.stat().st_size > 1000
        if self.save:
            target = REPO / "docs" / "console"
            target.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(path, target / path.name)
        return path


@pytest.fixture
def shots(tmp_path: pathlib.Path) -> Shots:
    return Shots(tmp_path)


def url(stack: Stack, path: str) -> str:
    return f"http://{stack.console_address}{path}"


def shows(driver: webdriver.Chrome, address: str, predicate: object, what: str) -> None:
    """Loads `address` again until `predicate(driver)` holds (the console samples every 0.5 s)."""

    def check() -> bool:
        try:
            driver.get(address)
            return bool(predicate(driver))  # type: ignore[operator]
        except WebDriverException:
            return False

    wait_until(check, DEADLINE_S, what)


def navigate(driver: webdriver.Chrome, element: WebElement) -> None:
    """Clicks a link or button that loads a page; returns once the new page has loaded."""
    old = driver.find_element(By.TAG_NAME, "html")
    element.click()

    def left(_driver: webdriver.Chrome) -> bool:
        # Stale, or (Chrome, mid-navigation) "does not belong to the document": either way the
        # old page is gone. Selenium's staleness_of only takes the first for an answer.
        try:
            old.is_enabled()
        except WebDriverException:
            return True
        return False

    WebDriverWait(driver, DEADLINE_S).until(left)
    WebDriverWait(driver, DEADLINE_S).until(
        lambda d: d.execute_script("return document.readyState") == "complete"
    )


def no_alert(driver: webdriver.Chrome) -> None:
    try:
        alert = driver.switch_to.alert
    except NoAlertPresentException:
        return
    raise AssertionError(f"a record's markup ran in the page: alert {alert.text!r}")


def test_topics_and_record_browser(
    stack: Stack, populated: None, browser: webdriver.Chrome, shots: Shots
) -> None:
    def orders_row(d: webdriver.Chrome) -> bool:
        cells = [c.text for c in d.find_elements(By.CSS_SELECTOR, "#topics tbody tr td")]
        # records/s over the last minute (cells[5]) is above 0 once the second half is sampled
        return (
            cells[:4] == ["orders", "2", "p0: 0–20\np1: 0–20", "40"]
            and cells[4] != "-"
            and cells[5].replace(".", "").isdigit()
            and float(cells[5]) > 0
        )

    shows(browser, url(stack, "/topics"), orders_row, "the topics page lists orders")
    assert browser.find_elements(By.CSS_SELECTOR, "svg.chart polyline")
    assert browser.title == "Topics - StreamHouse"
    shots.take(browser, "topics")

    navigate(browser, browser.find_element(By.LINK_TEXT, "orders"))
    rows = browser.find_elements(By.CSS_SELECTOR, "#partitions tbody tr")
    assert [r.text.split()[:4] for r in rows] == [["0", "0", "20", "20"], ["1", "0", "20", "20"]]
    shots.take(browser, "topic")

    navigate(browser, rows[0].find_element(By.LINK_TEXT, "browse records"))
    records = browser.find_elements(By.CSS_SELECTOR, "#records tbody tr")
    assert len(records) == 20
    first = records[0].find_elements(By.TAG_NAME, "td")
    assert first[0].text == "0" and first[2].text == EVIL  # the key, shown as text
    assert EVIL in first[3].text and EVIL in first[4].text  # value and header too
    no_alert(browser)

    # from offset 5, 3 records, as pretty JSON
    browser.find_element(By.ID, "offset").clear()
    browser.find_element(By.ID, "offset").send_keys("5")
    browser.find_element(By.ID, "limit").clear()
    browser.find_element(By.ID, "limit").send_keys("3")
    Select(browser.find_element(By.ID, "format")).select_by_value("json")
    navigate(browser, browser.find_element(By.ID, "show"))
    records = browser.find_elements(By.CSS_SELECTOR, "#records tbody tr")
    assert [r.find_element(By.TAG_NAME, "td").text for r in records] == ["5", "6", "7"]
    value = records[0].find_elements(By.TAG_NAME, "td")[3].text
    assert json.loads(value) == {"user": "user-2", "amount": 5}
    assert value.startswith('{\n  "user"')  # pretty-printed
    assert browser.find_element(By.ID, "next").text == "next 3 from offset 8"
    shots.take(browser, "records")

    navigate(browser, browser.find_element(By.ID, "as-hex"))
    key = browser.find_elements(By.CSS_SELECTOR, "#records tbody tr td")[2].text
    assert key.startswith("00000000  75 73 65 72 2d 32") and key.endswith("|user-2|")

    # bad input is refused with a message, not a stack trace
    browser.get(url(stack, "/topics/orders/partitions/0/records?offset=-4"))
    assert "offset=-4 is out of range" in browser.find_element(By.ID, "error").text
    browser.get(url(stack, "/topics/orders/partitions/0/records?offset=1000"))
    assert (
        "offset 1000 is outside the log: valid offsets are 0..20"
        in browser.find_element(By.ID, "error").text
    )
    browser.get(url(stack, "/topics/orders/partitions/0/records?format=yaml"))
    assert "format='yaml': give one of text, json, hex" in browser.find_element(By.ID, "error").text
    browser.get(url(stack, "/topics/orders/partitions/7/records"))
    assert "has partitions 0 to 1, not 7" in browser.find_element(By.ID, "error").text


def test_groups_storage_and_queries(
    stack: Stack, populated: None, browser: webdriver.Chrome, shots: Shots
) -> None:
    def lag_shown(d: webdriver.Chrome) -> bool:
        cells = d.find_elements(By.CSS_SELECTOR, '#groups td[data-group="billing"]')
        charted = d.find_elements(By.CSS_SELECTOR, "svg.chart polyline")
        return bool(cells) and cells[0].text == str(LAG) and bool(charted)

    shows(browser, url(stack, "/groups"), lag_shown, f"group billing with lag {LAG} and a chart")
    summary = browser.find_element(By.CSS_SELECTOR, "#groups tbody tr").text
    assert summary.startswith(f"billing Stable 1 {LAG} ")
    section = browser.find_element(By.ID, "group-billing").text
    assert "billing-worker" in section and "orders: 0, 1" in section
    assert "orders 0 12 20 8" in section and "orders 1 5 20 15" in section
    shots.take(browser, "groups")

    browser.get(url(stack, "/storage"))
    cost = browser.find_element(By.ID, "monthly-cost").text
    assert cost.startswith("$") and float(cost[1:].replace(",", "")) > 0
    topics = browser.find_element(By.ID, "storage-topics").text
    assert "orders" in topics
    totals = browser.find_element(By.ID, "storage-totals").text
    assert "live objects" in totals and "dead objects (awaiting deletion) 0" in totals
    shots.take(browser, "storage")

    shows(
        browser,
        url(stack, "/queries"),
        lambda d: "totals view running" in d.find_element(By.ID, "queries").text,
        "the view totals is listed as running",
    )
    browser.find_element(By.ID, "sql").send_keys(
        'SELECT "partition", count(*) AS n FROM "orders" GROUP BY "partition" ORDER BY 1'
    )
    navigate(browser, browser.find_element(By.ID, "run"))
    assert browser.find_element(By.ID, "row-count").text == "2 rows"
    result = [r.text for r in browser.find_elements(By.CSS_SELECTOR, "#result tbody tr")]
    assert result == ["0 20", "1 20"]
    shots.take(browser, "queries")

    browser.find_element(By.ID, "sql").clear()
    browser.find_element(By.ID, "sql").send_keys("DROP MATERIALIZED VIEW totals")
    navigate(browser, browser.find_element(By.ID, "run"))
    assert "the console only reads" in browser.find_element(By.ID, "error").text
    assert "totals" in browser.find_element(By.ID, "queries").text  # still there
