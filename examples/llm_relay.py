"""A simulated LLM token relay: tokens stream to a browser as they are generated, and
generation stops the moment the tab closes.

What it teaches: the use case most people bring to SSE. A model produces tokens
slowly (here an async generator with a delay per token); each token goes to the
browser as one event the moment it exists, so the answer appears word by word.
What matters as much: when the user closes the tab, presses Stop, or loses the
connection, the *generation* stops - a real model would otherwise burn GPU time
for nobody. tinystream notices the client's FIN at once (even while the
producer is waiting for its next token), cancels the handler and closes the
producer; ``contextlib.aclosing`` then closes the model's generator too, so its
``finally`` runs now rather than whenever the garbage collector gets to it.

Two details of EventSource: when the stream ends, a browser *reconnects*, which
would start the generation again. So the last event is ``done``, and the page
closes its EventSource when it sees it; and a request that does carry
``Last-Event-ID`` (a reconnect after a broken connection: this model cannot
resume mid-answer) is answered ``204 No Content``, which tells the browser to
stop reconnecting for good (WHATWG HTML §9.2.3).

Run it:   python -m tinystream examples.llm_relay:app
Then try:
  open http://127.0.0.1:8000/ in a browser, ask something, and close the tab (or press
      Stop) halfway: the server logs "generation stopped after N of M tokens"
  curl -N 'http://127.0.0.1:8000/generate?prompt=why+is+the+sky+blue'   the raw events;
      press Ctrl-C halfway and watch the log line
  curl -si -H 'Last-Event-ID: 3' 'http://127.0.0.1:8000/generate?prompt=x'   204
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import AsyncIterator

from tinystream import EventSourceResponse, HTTPError, Request, Response, Router, ServerSentEvent

logger = logging.getLogger("examples.llm_relay")

MAX_PROMPT = 2000  # characters
ANSWER = (
    "Sunlight is a mix of every colour. Air molecules scatter short wavelengths far more "
    "than long ones (Rayleigh scattering, proportional to the inverse fourth power of the "
    "wavelength), so blue light is scattered across the whole sky and reaches your eyes "
    "from every direction, while the sun itself looks a little yellower than it is."
)

PAGE = """<!doctype html>
<meta charset="utf-8"><title>token relay</title>
<style>body{font:16px system-ui;margin:2em;max-width:40em} #out{white-space:pre-wrap}</style>
<form id="ask"><input id="prompt" size="40" value="why is the sky blue?" autofocus>
<button>Ask</button> <button type="button" id="stop">Stop</button></form>
<p id="out"></p><p id="state"></p>
<script>
let source = null;
const out = document.getElementById("out"), state = document.getElementById("state");
function stop(reason) { if (source) { source.close(); source = null; state.textContent = reason; } }
document.getElementById("ask").onsubmit = event => {
  event.preventDefault();
  stop("");
  out.textContent = "";
  state.textContent = "generating…";
  const prompt = encodeURIComponent(document.getElementById("prompt").value);
  source = new EventSource("/generate?prompt=" + prompt);
  source.addEventListener("token", e => out.textContent += JSON.parse(e.data));
  source.addEventListener("done", () => stop("done"));   // or the browser would reconnect
  source.onerror = () => stop("connection lost");
};
document.getElementById("stop").onclick = () => stop("stopped: the server stops generating");
</script>
"""


class Relay:
    """The routes; counts what each generation produced (tests read ``finished``)."""

    def __init__(self, delay: float = 0.05) -> None:
        self.delay = delay  # seconds per token: a model's speed
        #: ``(tokens generated, tokens in the answer)`` of every generation that ended.
        self.finished: list[tuple[int, int]] = []
        self.app = Router()
        self.app.add("/", self.page)
        self.app.add("/generate", self.generate)

    async def page(self, request: Request) -> Response:
        return Response(PAGE, media_type="text/html")

    async def model(self, prompt: str) -> AsyncIterator[str]:
        """Stands in for a language model: one token at a time, each taking a while."""
        tokens = [word + " " for word in ANSWER.split()]
        produced = 0
        try:
            for token in tokens:
                await asyncio.sleep(self.delay)  # the GPU at work
                produced += 1
                yield token
        finally:
            # Runs when the answer is complete *and* when the client left mid-answer.
            if produced < len(tokens):
                logger.info("generation stopped after %d of %d tokens", produced, len(tokens))
            self.finished.append((produced, len(tokens)))

    async def generate(self, request: Request) -> Response | EventSourceResponse:
        if request.last_event_id is not None:
            return Response(status=204)  # a reconnect: this model cannot resume, stop trying
        prompt = request.query_params.get("prompt", "").strip()
        if not prompt or len(prompt) > MAX_PROMPT:
            raise HTTPError(400, f"prompt must be 1 to {MAX_PROMPT} characters")

        async def events() -> AsyncIterator[ServerSentEvent]:
            # aclosing: when the client leaves, this generator is closed, and it closes
            # the model's generator at once (its finally runs now, not at GC time).
            async with contextlib.aclosing(self.model(prompt)) as tokens:
                number = 0
                async for token in tokens:
                    number += 1
                    # JSON keeps spaces and newlines in a token exactly as they are.
                    yield ServerSentEvent(json.dumps(token), event="token", id=str(number))
            yield ServerSentEvent("", event="done")

        return EventSourceResponse(events(), ping=10)


relay = Relay()
app = relay.app
