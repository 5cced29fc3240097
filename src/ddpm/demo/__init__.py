"""The web page of a run (``ddpm demo``, the optional ``[demo]`` extra): sample and watch the reverse
process, noise an image by the forward process, interpolate. ``handlers`` holds what it does (plain
functions, tested without a browser), ``app`` the Gradio page around them."""
