"""Live sensor streams for the gateway: every source yields validated ``SampleBatch`` es from a bounded buffer.

Back-pressure: each source owns a ``SampleBuffer`` of ``buffer_size`` samples. Live sources use
``drop_oldest`` (the newest data wins; ``source.dropped`` counts what was discarded); ReplaySource
uses ``block`` (the replay waits for the consumer). Malformed input is counted in
``source.stats.rejected`` by reason and skipped with a rate-limited log line.

``sensors.sources.ble.BleSource`` (Bluetooth LE wearables) is imported from its module: it needs the
optional ``[ble]`` extra (bleak).
"""

from sensors.sources.base import Source
from sensors.sources.buffer import SampleBuffer
from sensors.sources.mqtt import MqttSource
from sensors.sources.parse import LineParser, MalformedSample, SourceStats, StreamFormat
from sensors.sources.replay import ReplaySource
from sensors.sources.serial_source import SerialSource
from sensors.sources.stdin import StdinSource
from sensors.sources.udp import UdpSource

__all__ = [
    "LineParser", "MalformedSample", "MqttSource", "ReplaySource", "SampleBuffer", "SerialSource", "Source",
    "SourceStats", "StdinSource", "StreamFormat", "UdpSource",
]
