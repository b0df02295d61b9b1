"""The sink: deliver action records in order per key, in parallel across keys.

Stages, one small class each, composed by `runner.SinkRunner`:

- `lanes.Lanes`: ordering per key and the capacity bound (`maxInFlight`); a lane is cleaned up
  in one place.
- `dedupe.Dedupe`: has this delivery happened (or a user key within its window), the marks
  after delivery, and the changelog write that makes a mark durable.
- `delivery.Delivery`: the target, the retries and the execution records of one delivery.
- `letters.SinkLetters`: dead letters of the sink, with the source record's bytes read back.
- `stopping.StopSignal`: a graceful stop that cuts every wait short.
"""

from agents.sink.runner import SinkRunner

__all__ = ["SinkRunner"]
