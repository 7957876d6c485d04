"""The agent link: throughput and latency of `true` with each agent on its gRPC stream,
against the same runs with Ray calls alone (`link=ray`), alternating rounds in one run."""

from __future__ import annotations

from bench.rounds import compare


def main() -> None:
    streams, calls = compare("stream / Ray calls", {"link": "stream"}, {"link": "ray"},
                             "reported; the stream must keep the channel's gain")
    assert all(r.agent.link == "stream" for r in streams), "an agent was not on its stream"
    assert all(r.agent.link == "ray" for r in calls), "an agent was on a stream"


if __name__ == "__main__":
    main()
