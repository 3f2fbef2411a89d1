"""Tuning constants of :class:`ionn_net.aio.pacing.Pacer`'s estimated rate (a module of its
own so that the pacer's module stays readable). Each says what it bounds and why; the
methods named in the comments are the pacer's."""

from __future__ import annotations

#: Unpaced bytes above this share of the pacing rate within a control interval make its
#: queueing delay no reason to back off (see Pacer._signals).
HEAVY_UNPACED = 0.25
#: Time constant of the smoothed unpaced rate: a few back-to-back queries.
UNPACED_SMOOTHING_S = 0.5
#: Share of a control interval held back by the peer's receive window above which unsent
#: bytes in the socket are the reader's doing (see Pacer._signals).
WINDOW_BOUND = 0.1
#: Acknowledged below this share of what was written a round trip before: the path does
#: not keep up (over PacingConfig.min_span_s, where a sample is accurate to ~1%).
BEHIND = 0.98
#: Segments acknowledged before the kernel's smoothed RTT (a 1/8 average per ACK, one ACK
#: per two segments) has mostly taken in a new level: how long a queue takes to show in it.
SRTT_SEGMENTS = 16
#: What the smoothed RTT keeps of a past sample per ACK.
SRTT_KEEPS = 7 / 8
#: A ramp grows only while the path acknowledges at least this share of what was written
#: a round trip before (the span is short: one sample can read 10% low)...
RAMP_KEEPS_UP = 0.85
#: ...a test skipped while one unpaced write is more than this share of what was written
#: over the span compared (a 16 KiB query is a sixth of 40 ms at 20 Mbit/s).
RAMP_UNPACED = 0.1
#: The longest a ramp holds its rate through a stall (see Pacer._ramp_stalled): a host
#: stopped for a moment, not a path that got slower.
RAMP_STALL_S = 0.3
#: A ramp that went back to its deliveries more often than this at one rate ends there.
RAMP_SHRINKS = 3
#: The shortest span the end of a ramp measures the path's delivery over (a bottleneck's
#: burst allowance passes faster than its rate: 2 ms of it at 200 Mbit/s in tbf).
EXIT_SPAN_S = 0.05
#: After a ramp, the path's deliveries over this share of a round trip are measured...
AFTER_RAMP = 0.8
#: ...when that is at least this long (a few dozen ACKs).
AFTER_RAMP_MIN_S = 0.01
#: The first probe follows the ramp after this many control intervals: it calibrates the
#: ramp's estimate, which the ramp's growth and a bottleneck's burst allowance blur.
FIRST_PROBE_INTERVALS = 4
#: A queue this many times queue_high_s is no sample's noise: the estimate goes down to what
#: the path delivered (a path that got slower)...
LONG_QUEUE = 4.0
#: ...but by at most this share per control interval: a path that stalled for a moment
#: (a host stopped by CPU contention) delivered next to nothing meanwhile, and is not slower.
LONG_QUEUE_STEP = 0.25
#: Deliveries over two halves of a span this close are a path's steady rate, not a stall's.
STEADY = 0.8
#: A probe's steps stay at PacingConfig.increase until it has raised the estimate by this
#: factor (well past 1 / gain: the path got faster), then grow by _PROBE_GROWTH per step, up to
#: _PROBE_MAX_STEP, so a path much faster than estimated is found within a few seconds.
PROBE_SPAN = 1.2
PROBE_GROWTH = 1.5
PROBE_MAX_STEP = 0.04
#: The first probe after the ramp grows past this factor above 1 / gain, by up to
#: RAMP_PROBE_MAX_STEP per step (see Pacer._probe_span): a ramp that a busy host's RTT ended
#: early is back within a second or two, with a few milliseconds of queue at its last step.
RAMP_PROBE_SPAN = 1.05
RAMP_PROBE_MAX_STEP = 0.1
#: Probes after the ramp until one measured the path (each cut short by a queue that was
#: not its own, or a slow reader, is followed by the next a few intervals on; see
#: Pacer._end_probe): the ramp's estimate reads a bottleneck's burst allowance too.
CALIBRATION_PROBES = 6
#: A probe measures the path over at least this long (at 200 Mbit/s a 64 KiB ACK is 2.6 ms).
PROBE_MEASURE_S = 0.1
#: Time constant of the queueing delay outside probes: what a probe's queue is measured
#: against (on a busy host the RTT carries a millisecond or two of scheduling).
BASE_SMOOTHING_S = 1.0
#: Pacing rate left unused (nothing ready to send) above this share of a span makes what
#: the path delivered over it a lower bound of the path's rate (see Pacer._lower_bound_only).
APP_LIMITED = 0.02
#: What the path delivered over this long, the sender not application-limited, bounds the
#: rate last measured from below (see Pacer._delivered_at_least): long enough that a
#: bottleneck's burst allowance is a small part of it (2 ms at 200 Mbit/s in tbf).
LOWER_BOUND_S = 0.5
#: How long the most a ramp's path delivered bounds its growth while the sender is
#: application-limited (a few dozen round trips at 20 ms).
RAMP_BEST_S = 1.0
RAMP_BEST_SPAN_S = 0.1
#: How far back the kernel's delivery-rate samples tell whether the path keeps up.
FLIGHTS_S = 0.1
#: Chunks of fewer segments than this often end on a lone segment that the receiver holds
#: until the next chunk arrives (see Pacer._ack_delay).
ACK_SEGMENTS = 2
