"""The demo page: its handlers called directly, the served app driven through gradio_client, and the page in
a headless Chromium (skipped where Gradio, Selenium or Chromium is missing)."""

from __future__ import annotations

import shutil
import socket

import numpy as np
import pytest
import torch
from PIL import Image

from ddpm.cli import main
from ddpm.demo import handlers as h
from ddpm.pipeline import SamplingOptions, load_run
from ddpm.sampling.noise import seed_generators
from ddpm.training.loop import train
from tests.conftest import tiny_config

LIMITS = h.Limits(max_images=6, max_steps=20, max_upload_mb=0.01)


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    return load_run(train(tiny_config(), tmp_path_factory.mktemp("demo") / "run", progress=False))


def test_sampling_streams_every_step_and_ends_with_what_ddpm_sample_draws(run, tmp_path):
    outs = list(h.sample(run, LIMITS, sampler="ddim", steps=5, seed=3, n=2))
    assert len(outs) == 6 and [o["progress"] for o in outs[:2]] == ["step 1 of 5 (t = 19)", "step 2 of 5 (t = 15)"]
    final = outs[-1]
    expected = run.sample(2, generator=seed_generators([3, 4]), sampling=SamplingOptions("ddim", steps=5),
                          progress=False)
    assert torch.equal(final["samples"], expected)
    # The command line draws the same images from the same seed.
    assert main(["sample", "--checkpoint", str(run.path), "--n", "2", "--seed", "3", "--sampler", "ddim", "--steps",
                 "5", "--out", str(tmp_path / "cli")]) == 0
    cli = np.load(tmp_path / "cli" / "samples.npz")["arr_0"]
    assert np.array_equal(h.to_uint8(final["samples"]), cli)
    assert final["images"].shape == h.picture(expected).shape
    assert Image.open(final["gif"]).n_frames == 5


@pytest.mark.parametrize("kwargs, message", [
    (dict(n=7), "between 1 and 6"),
    (dict(steps=21), "steps must be between 1 and 20"),
    (dict(guidance=2.0), "guidance needs a class"),
])
def test_requests_over_the_limits_are_refused_with_a_message(run, kwargs, message):
    with pytest.raises(h.DemoError, match=message):
        next(h.sample(run, LIMITS, **{"sampler": "ddim", "steps": 5, **kwargs}))


def test_uploads_noised_by_the_forward_process_and_bad_uploads_refused(run, tmp_path):
    good = tmp_path / "digit.png"
    Image.fromarray(np.full((16, 16), 200, np.uint8)).save(good)
    x0 = h.read_upload(run, LIMITS, good)
    assert x0.shape == (1, 1, 8, 8)
    pic, text = h.forward(run, x0, 0, seed=1)
    abar = run.schedule.alphas_cumprod[0].item()
    assert f"alpha-bar = {abar:.4f}" in text and pic.shape[1] > pic.shape[0]  # x_0 beside x_t
    (tmp_path / "notes.png").write_text("not an image")
    with pytest.raises(h.DemoError, match="not an image"):
        h.read_upload(run, LIMITS, tmp_path / "notes.png")
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (200, 200, 3), dtype=np.uint8)).save(tmp_path / "big.png")
    with pytest.raises(h.DemoError, match="over this demo's limit"):
        h.read_upload(run, LIMITS, tmp_path / "big.png")
    with pytest.raises(h.DemoError, match="t must be between"):
        h.forward(run, x0, 20)


def test_interpolations(run):
    row = h.seeds_row(run, LIMITS, 3, 4, 3, steps=5)
    ends = run.sample(2, generator=seed_generators([3, 4]), sampling=SamplingOptions("ddim", steps=5), progress=False)
    assert row.shape == h.picture(torch.zeros(3, 1, 8, 8), nrow=3).shape
    # The row's first and last cells are the seeds' own DDIM samples.
    first = h.picture(ends[:1])
    assert np.array_equal(row[:, : first.shape[1]], first)
    x = torch.rand(1, 1, 8, 8) * 2 - 1
    assert h.images_row(run, LIMITS, x, -x, 10, 3).shape == h.picture(torch.zeros(5, 1, 8, 8), nrow=5).shape


# --- the served page ---------------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def served(run):
    pytest.importorskip("gradio")
    from ddpm.demo.app import build, launch

    page = build(run, LIMITS)
    url = launch(page, port=free_port(), limits=LIMITS, block=False)
    yield url
    page.close()


def test_the_served_app_streams_steps_and_returns_ddpm_samples_images(run, served, tmp_path):
    from gradio_client import Client

    client = Client(served, verbose=False, download_files=str(tmp_path))
    outputs = list(client.submit("ddim", 5, 3, 2, 0.0, "none", api_name="/sample"))
    assert len(outputs) == 6  # five steps as they happen, then the result
    assert outputs[0][2] == "step 1 of 5 (t = 19)" and outputs[-1][2] == "done: 5 network calls"
    expected = run.sample(2, generator=seed_generators([3, 4]), sampling=SamplingOptions("ddim", steps=5),
                          progress=False)
    shown = np.asarray(Image.open(outputs[-1][3]).convert("L"))
    assert np.array_equal(shown, h.picture(expected))
    with pytest.raises(Exception, match="greater than maximum"):  # over the cap: a message, and the app lives on
        client.predict("ddim", 5, 3, 99, 0.0, "none", api_name="/sample")
    assert len(list(client.submit("ddim", 2, 0, 1, 0.0, "none", api_name="/sample"))) == 3


@pytest.mark.skipif(not shutil.which("chromium") or not shutil.which("chromedriver"), reason="no headless Chromium")
def test_a_browser_opens_the_page_samples_and_sees_the_images(served, tmp_path):
    webdriver = pytest.importorskip("selenium.webdriver")
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as ec
    from selenium.webdriver.support.ui import WebDriverWait

    options = webdriver.ChromeOptions()
    options.binary_location = shutil.which("chromium")
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=1280,1400"):
        options.add_argument(arg)
    driver = webdriver.Chrome(service=webdriver.ChromeService(shutil.which("chromedriver")), options=options)
    try:
        driver.get(served)
        WebDriverWait(driver, 60).until(ec.element_to_be_clickable((By.ID, "sample-button"))).click()
        WebDriverWait(driver, 120).until(lambda d: "done:" in d.find_element(By.CSS_SELECTOR, "#progress textarea")
                                         .get_attribute("value"))
        WebDriverWait(driver, 30).until(lambda d: d.find_elements(By.CSS_SELECTOR, "#samples img"))
        driver.save_screenshot(str(tmp_path / "demo.png"))
        assert Image.open(tmp_path / "demo.png").size[0] > 0
        shutil.copy(tmp_path / "demo.png", shutil.os.environ.get("DDPM_DEMO_SCREENSHOT", tmp_path / "kept.png"))
    finally:
        driver.quit()


def test_the_forward_tab_takes_an_image_of_the_runs_data_set(run):
    from ddpm.data.datasets import load_dataset

    x0 = h.data_image(run, 5)
    assert torch.equal(x0, load_dataset("digits").images[5:6])
    with pytest.raises(h.DemoError, match="images 0 to 1796"):
        h.data_image(run, 5000)


def test_the_page_fetches_nothing_from_elsewhere(served):
    """No analytics, web fonts or scripts from another host: the page works offline."""
    import re
    import urllib.request

    html = urllib.request.urlopen(served, timeout=30).read().decode()
    external = {u for u in re.findall(r'(?:src|href)="(https?://[^"]+)"', html) if not u.startswith(served)}
    assert not external, external
    assert "fonts.googleapis" not in html and "googletagmanager" not in html
