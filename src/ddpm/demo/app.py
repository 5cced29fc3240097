"""The Gradio page of a run: three tabs (Sample, Forward process, Interpolate) around ``ddpm.demo.handlers``.

Gradio is the optional ``[demo]`` extra, imported where the page is built. The page works offline: no
analytics, a theme of system fonts (Gradio's default theme fetches web fonts), and it listens on
127.0.0.1 unless told otherwise. One job runs at a time (a queue), within ``Limits``.
"""

from __future__ import annotations

import os

from ddpm.demo import handlers as h
from ddpm.errors import UserError
from ddpm.pipeline import Run
from ddpm.sampling import SAMPLERS

SYSTEM_FONTS = ["ui-sans-serif", "system-ui", "sans-serif"]


def _gradio():
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
    try:
        import gradio
    except ImportError:
        raise UserError('the demo needs Gradio: pip install -e ".[demo]"') from None
    return gradio


def build(run: Run, limits: h.Limits = h.Limits()):
    """The page (a ``gradio.Blocks``) of ``run``; ``launch`` serves it."""
    gr = _gradio()
    cfg, T = run.config, run.schedule.num_timesteps
    with gr.Blocks(analytics_enabled=False, title=f"ddpm: {run.path}") as page:
        gr.Markdown(f"### {run.path} — {cfg.model.image_size[0]}x{cfg.model.image_size[1]}, T = {T}, "
                    f"step {run.step}")
        with gr.Tab("Sample"):
            _sample_tab(gr, run, limits)
        with gr.Tab("Forward process"):
            _forward_tab(gr, run, limits)
        with gr.Tab("Interpolate"):
            _interpolate_tab(gr, run, limits)
    page.queue(default_concurrency_limit=1, max_size=16)
    return page


def _shown(gr, fn):
    """Run a handler; its refusals become a message on the page, not a crash."""
    def wrapped(*args):
        try:
            result = fn(*args)
            if hasattr(result, "__next__"):
                return (yield from result)
            yield result
        except UserError as e:
            raise gr.Error(str(e)) from None
    return wrapped


def _sample_tab(gr, run: Run, limits: h.Limits) -> None:
    T, classes = run.schedule.num_timesteps, run.config.model.num_classes

    def do_sample(sampler, steps, seed, n, guidance, class_label):
        label = None if class_label in (None, "", "none") else int(class_label)
        for out in h.sample(run, limits, sampler=sampler, steps=int(steps) if steps else None, seed=int(seed),
                            n=int(n), guidance=float(guidance) if label is not None else None, class_label=label):
            yield out["x_t"], out["x0"], out["progress"], out.get("images"), out.get("gif")

    with gr.Row():
        sampler = gr.Dropdown(list(SAMPLERS), value="ddim", label="sampler")
        steps = gr.Number(value=min(50, T), precision=0, label=f"steps (1-{min(T, limits.max_steps)})")
        seed = gr.Number(value=0, precision=0, label="seed (image i: seed + i)")
        n = gr.Slider(1, limits.max_images, value=min(8, limits.max_images), step=1, label="images")
    with gr.Row(visible=bool(classes)):
        class_label = gr.Dropdown(["none", *map(str, range(classes or 0))], value="none", label="class")
        guidance = gr.Slider(0.0, 8.0, value=0.0, step=0.5, label="guidance strength w")
    go = gr.Button("Sample", variant="primary", elem_id="sample-button")
    progress = gr.Textbox(label="progress", interactive=False, elem_id="progress")
    with gr.Row():
        x_t = gr.Image(label="x_t", interactive=False, elem_id="x-t", format="png")
        x0 = gr.Image(label="predicted x0", interactive=False, elem_id="x0", format="png")
    with gr.Row():
        final = gr.Image(label="samples", interactive=False, elem_id="samples", format="png")
        gif = gr.File(label="trajectory (GIF)", interactive=False)
    go.click(_shown(gr, do_sample), [sampler, steps, seed, n, guidance, class_label], [x_t, x0, progress, final, gif],
             api_name="sample")


def _forward_tab(gr, run: Run, limits: h.Limits) -> None:
    T = run.schedule.num_timesteps

    def do_forward(path, index, t, seed):
        x0 = h.read_upload(run, limits, path) if path else h.data_image(run, int(index or 0))
        return h.forward(run, x0, int(t), int(seed))

    with gr.Row():
        upload = gr.Image(type="filepath", label="an image (or leave empty: the data set's)", sources=["upload"])
        noised = gr.Image(label="x_0 | x_t", interactive=False, format="png")
    with gr.Row():
        index = gr.Number(value=0, precision=0,
                          label=f"image # of the run's data set ({run.config.train.data or 'none'})")
        fseed = gr.Number(value=0, precision=0, label="noise seed")
    t = gr.Slider(0, T - 1, value=T // 4, step=1, label="t (0-based)")
    info = gr.Textbox(label="schedule at t", interactive=False)
    for trigger in (t.release, upload.change, fseed.change, index.change):
        trigger(_shown(gr, do_forward), [upload, index, t, fseed], [noised, info],
                api_name="forward" if trigger == t.release else False)


def _interpolate_tab(gr, run: Run, limits: h.Limits) -> None:
    T = run.schedule.num_timesteps

    def do_seeds(seed_a, seed_b, count, sampler, steps):
        return h.seeds_row(run, limits, int(seed_a), int(seed_b), int(count), sampler, int(steps) if steps else None)

    def do_images(path_a, path_b, t, count, seed):
        x_a, x_b = h.read_upload(run, limits, path_a), h.read_upload(run, limits, path_b)
        return h.images_row(run, limits, x_a, x_b, int(t), int(count), int(seed))

    with gr.Row():
        seed_a = gr.Number(value=0, precision=0, label="seed A")
        seed_b = gr.Number(value=1, precision=0, label="seed B")
        count = gr.Slider(2, limits.max_images, value=min(8, limits.max_images), step=1, label="images")
        isampler = gr.Dropdown(list(SAMPLERS), value="ddim", label="sampler")
        isteps = gr.Number(value=min(50, T), precision=0, label="steps")
    seeds_out = gr.Image(label="slerp between the seeds' noise", interactive=False, format="png")
    gr.Button("Interpolate seeds").click(_shown(gr, do_seeds), [seed_a, seed_b, count, isampler, isteps], seeds_out,
                                         api_name="seeds")
    with gr.Row():
        image_a = gr.Image(type="filepath", label="image A", sources=["upload"])
        image_b = gr.Image(type="filepath", label="image B", sources=["upload"])
    it = gr.Slider(0, T - 1, value=T // 2, step=1, label="t: diffuse both to t, mix, denoise (Ho et al. §4.3)")
    images_out = gr.Image(label="A | mixes | B", interactive=False, format="png")
    gr.Button("Interpolate images").click(_shown(gr, do_images), [image_a, image_b, it, count, seed_a], images_out,
                                          api_name="images")


def launch(page, *, host: str = "127.0.0.1", port: int | None = None, limits: h.Limits = h.Limits(),
           block: bool = True):
    """Serve ``page`` on host:port (a free port when None); returns the page's local URL."""
    gr = _gradio()
    theme = gr.themes.Base(font=SYSTEM_FONTS, font_mono=["ui-monospace", "monospace"])
    page.launch(server_name=host, server_port=port, share=False, prevent_thread_lock=not block, quiet=not block,
                max_file_size=int(limits.max_upload_mb * 2**20), theme=theme, show_error=True, footer_links=[])
    return page.local_url
