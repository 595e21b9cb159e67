"""Which of the agent's own audio goes with each speech frame the server renders.

The server's speech frame k is samples [k*640, (k+1)*640) of the 16 kHz audio pushed since the
last interrupt, and each utterance's last frame is padded at end_of_speech, so utterance u owns
ceil(n16_u / 640) frames. Frame j of an utterance is paired with the same 40 ms of the agent's
original audio (at the agent's rate), so the audio leaves byte for byte as it came in.
"""
from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field

from flashhead_pipecat.media import FPS, SAMPLES_PER_FRAME


@dataclass
class Utterance:
    """One TTS response: its audio as it came in, and what was sent of it to the server."""

    opening: object | None = None          # the TTSStartedFrame, released with the first frame
    closing: object | None = None          # the TTSStoppedFrame, released after the last frame
    audio: bytearray = field(default_factory=bytearray)
    rate: int = 0
    channels: int = 1
    context_id: str | None = None
    sent_samples: int = 0                  # 16 kHz samples pushed to the server
    ended: bool = False                    # end_of_speech sent: the frame count is final
    frames_out: int = 0                    # speech frames already paired

    @property
    def frames(self) -> int:
        """Frames the server renders for this utterance (final once ended)."""
        return -(-self.sent_samples // SAMPLES_PER_FRAME)

    @property
    def done(self) -> bool:
        return self.ended and self.frames_out >= self.frames

    def audio_of(self, j: int) -> bytes:
        """Frame j's share of the original audio; the last frame takes whatever is left."""
        width = 2 * self.channels
        start = (j * self.rate // FPS) * width
        end = len(self.audio) if self.ended and j == self.frames - 1 else ((j + 1) * self.rate // FPS) * width
        return bytes(self.audio[start:end])


@dataclass
class SpeechFrame:
    """One rendered speech frame's place: its utterance, its index there, and its audio."""

    utterance: Utterance
    index: int
    audio: bytes
    last: bool                      # the utterance's last frame: its closing frame follows it
    settled: list[Utterance]        # utterances done before this frame whose rest leaves first


class Ledger:
    """Utterances in the order they were spoken, until all their frames came back."""

    def __init__(self, max_utterances: int):
        self.max_utterances = max_utterances
        self.utterances: deque[Utterance] = deque()

    def current(self) -> Utterance | None:
        """The utterance still receiving audio, if any."""
        last = self.utterances[-1] if self.utterances else None
        return last if last is not None and not last.ended else None

    def open(self, opening: object | None = None) -> Utterance:
        if len(self.utterances) >= self.max_utterances:
            raise OverflowError(f"more than {self.max_utterances} utterances wait for their frames")
        utterance = Utterance(opening=opening)
        self.utterances.append(utterance)
        return utterance

    def take(self, count: int) -> list[SpeechFrame]:
        """The next `count` rendered speech frames, paired (fewer if the server rendered more than
        was pushed). An utterance that was done before a frame (no audio at all, or ended after
        its last frame left) rides along with that frame."""
        out, settled = [], []
        while count > 0 and self.utterances:
            u = self.utterances[0]
            if u.done:
                settled.append(self.utterances.popleft())
                continue
            if u.frames_out >= u.frames:
                break
            j, u.frames_out, count = u.frames_out, u.frames_out + 1, count - 1
            out.append(SpeechFrame(u, j, u.audio_of(j), u.done, settled))
            settled = []
            if u.done:
                self.utterances.popleft()
        self.utterances.extendleft(reversed(settled))   # no frame after them yet: settle() has them
        return out

    def settle(self) -> list[Utterance]:
        """Done utterances at the head whose rest has not left with a frame."""
        out = []
        while self.utterances and self.utterances[0].done:
            out.append(self.utterances.popleft())
        return out

    def clear(self) -> list[Utterance]:
        dropped, self.utterances = list(self.utterances), deque()
        return dropped

    def describe(self) -> str:
        """What is still waiting, for error messages."""
        waiting = [f"{u.frames_out}/{u.frames}{'' if u.ended else '+'} frames" for u in self.utterances]
        return f"{len(waiting)} utterances waiting: {', '.join(waiting) or 'none'}"

    @property
    def pending(self) -> bool:
        return bool(self.utterances)
