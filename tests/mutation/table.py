"""The deliberate bugs of the mutation check (``tests/mutation/run.py``): one table.

Each :class:`Mutation` breaks one guarantee of the project with exact text edits of the
source: every ``old`` snippet must occur exactly once in its file (paths relative to the
repository root), or the run fails with "pattern not found" / "pattern ambiguous". That is
on purpose: when a refactor moves or rewrites the code, the mutation must be re-pointed at
the new code here, not silently skipped. ``tests`` are the pytest node ids that must fail
with the bug in place; keep them few (the whole run should take minutes).

Snippets are whole lines (with their indentation and the final newline) unless a shorter
unique piece is clearer.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["MUTATIONS", "Edit", "Mutation"]


@dataclass(frozen=True, slots=True)
class Edit:
    """Replace the one occurrence of ``old`` in ``path`` with ``new``."""

    path: str
    old: str
    new: str


@dataclass(frozen=True, slots=True)
class Mutation:
    name: str
    guarantee: str
    edits: tuple[Edit, ...]
    tests: tuple[str, ...]


STORE = "src/ionn_net/store.py"
CODECS = "src/ionn_net/proto/codecs.py"
SPEC = "src/ionn_net/model/spec.py"
SCHEMA = "src/ionn_net/model/schema.py"
CLIENT = "src/ionn_net/client/runner.py"
MESSAGES = "src/ionn_net/messages/members.py"
SCHEDULER = "src/ionn_net/proto/scheduler.py"
PROTOCOL = "src/ionn_net/aio/protocol.py"
SERVER = "src/ionn_net/server.py"
RESULTS = "src/ionn_net/bench/results.py"

ATTACKS = "tests/integration/hardening/test_attacks.py"
CODEC_TESTS = "tests/unit/proto/test_proto_codecs.py"
FUZZ = "tests/unit/test_spec_fuzz.py"
BACKPRESSURE = "tests/integration/aio/test_aio_backpressure.py"
PRIORITY = "tests/integration/test_query_priority.py::test_a_query_overtakes_the_upload_in_progress"
DEADLINES = "tests/integration/hardening/test_server_deadlines.py"

MUTATIONS: tuple[Mutation, ...] = (
    # -- digest verification ---------------------------------------------------------
    Mutation(
        "blob_digest_at_completion",
        "a finished blob is stored only if its bytes hash to its SHA-256 (§10.5.3)",
        (Edit(STORE, "        if actual != digest:\n", "        if False:\n"),),
        (
            "tests/unit/test_store.py::test_put_refuses_bytes_that_do_not_match_the_digest",
            "tests/conformance/test_s10_messages.py"
            "::test_digest_is_verified_and_a_mismatch_discards_the_partial",
        ),
    ),
    Mutation(
        "store_verify_on_read",
        "a blob read back from disk is verified again; bit rot is never served",
        (Edit(STORE, "        if sha256_hex(data) != digest:\n", "        if False:\n"),),
        ("tests/unit/test_store.py::test_bit_rot_on_disk_is_detected_and_never_served",),
    ),
    # -- decompression limits (§12.1) -----------------------------------------------------
    Mutation(
        "zstd_declared_content_size",
        "a zstd frame's declared content size must equal decoded_length before decompressing",
        (Edit(CODECS, "    if params.content_size != decoded_length:\n", "    if False:\n"),),
        (
            f"{CODEC_TESTS}::test_frames_declaring_more_than_decoded_length_allocate_nothing",
            f"{ATTACKS}::test_decompression_bomb_is_refused",
        ),
    ),
    Mutation(
        # Removing the output check alone changes nothing observable: python-zstandard
        # itself refuses output whose length differs from the declared content size. It is
        # what refuses a frame declaring *less* than decoded_length once the header check
        # only guards against bombs (declaring more), so the bug is both edits at once.
        "zstd_output_size",
        "the decoded output must have exactly decoded_length bytes",
        (
            Edit(
                CODECS,
                "    if params.content_size != decoded_length:\n",
                "    if params.content_size > decoded_length:\n",
            ),
            Edit(CODECS, "    if len(out) != decoded_length:\n", "    if False:\n"),
        ),
        (f"{CODEC_TESTS}::test_violations_are_compression_errors",),
    ),
    # -- models are programs ----------------------------------------------------------
    Mutation(
        "forbidden_key_screen",
        "a manifest key naming code or a class (module, class_name, ...) is refused at any depth",
        (Edit(SPEC, "                if key in FORBIDDEN_KEYS:\n", "                if False:\n"),),
        (f"{FUZZ}::test_known_bad_edits_are_refused_for_their_reason",),
    ),
    Mutation(
        "class_allowlist",
        "a layer class outside the allowlist is refused",
        (
            Edit(
                SCHEMA,
                "    schema = SCHEMAS.get(cls) if isinstance(cls, str) else None\n",
                "    schema = SCHEMAS.get(cls, SCHEMAS['Identity']) if isinstance(cls, str)"
                " else None\n",
            ),
        ),
        (f"{FUZZ}::test_known_bad_edits_are_refused_for_their_reason",),
    ),
    Mutation(
        "manifest_validation_skipped",
        "the manifest validator refuses what it must (fuzzed with known-bad edits)",
        (
            Edit(SPEC, "    _screen(obj, limits)\n    top = _obj(", "    top = _obj("),
            Edit(
                SPEC,
                "    validate_manifest(manifest, limits)\n    return manifest\n",
                "    return manifest\n",
            ),
        ),
        (FUZZ,),
    ),
    # -- exactly one answer per query ------------------------------------------------------
    Mutation(
        "local_fallback_disabled",
        "a query whose server segment fails finishes locally (one answer, never an error)",
        (
            Edit(
                CLIENT,
                '            logger.warning("server segment failed (%s): finishing locally", '
                "exc)\n",
                "            raise\n",
            ),
        ),
        ("tests/integration/test_offload.py::test_server_closed_mid_upload_loses_no_query",),
    ),
    # -- a result says the precision it ran at (§10.12.5) ---------------------------------
    Mutation(
        "ran_base_read_when_the_result_is_made",
        "a result's ran_base names the weights its query ran on, even if a swap follows",
        (
            Edit(
                SERVER,
                "            ran_base=ran_base,\n",
                "            ran_base=_base_layers(model, ran_base or ()),\n",
            ),
        ),
        (
            "tests/conformance/test_s10_stages.py::test_ran_base_names_the_weights_a_query_ran"
            "_on_when_a_swap_lands_before_its_result",
        ),
    ),
    Mutation(
        "client_believes_a_result_older_than_the_load",
        "a result older than the load_ok that made a layer exact leaves it exact (§10.12.4)",
        (
            Edit(
                "src/ionn_net/client/plan_state.py",
                "        found = (frozenset(layers) - frozenset(base_when_sent)) & self._ready\n",
                "        found = frozenset(layers) & self._ready\n",
            ),
        ),
        (
            "tests/unit/test_plan_state_base.py::test_a_result_older_than_the_load_that_made_a"
            "_layer_exact_leaves_it_exact",
        ),
    ),
    # -- queries overtake the upload (§8) ---------------------------------------------------
    Mutation(
        "client_query_urgency_below_upload",
        "the client sends queries in a more urgent class than the upload",
        (Edit(MESSAGES, "QUERY_URGENCY: Final = 1\n", "QUERY_URGENCY: Final = 6\n"),),
        (PRIORITY,),
    ),
    Mutation(
        "client_query_urgency_equal_upload",
        "the client sends queries in a more urgent class than the upload",
        (Edit(MESSAGES, "QUERY_URGENCY: Final = 1\n", "QUERY_URGENCY: Final = 5\n"),),
        (PRIORITY,),
    ),
    Mutation(
        "scheduler_least_urgent_first",
        "the sender emits the most urgent class first (§8.2)",
        (
            Edit(
                SCHEDULER,
                '        """The stream whose frame goes next (rotating round-robin classes), '
                'or ``None``."""\n',
                '        """The stream whose frame goes next (rotating round-robin classes), '
                'or ``None``."""\n'
                "        for u in reversed(range(URGENCY_LEVELS)):\n"
                "            for s in (*self._fifo[u], *self._rr[u]):\n"
                "                if eligible(s):\n"
                "                    return s\n"
                "        return None\n",
            ),
        ),
        (
            "tests/unit/proto/test_proto_scheduler.py::test_most_urgent_class_first_and_fifo_by_open_order",
            "tests/conformance/test_s08_priorities.py::test_lowest_urgency_with_credit_goes_first",
        ),
    ),
    # -- flood defenses ------------------------------------------------------------------
    Mutation(
        "outbound_cap",
        "what a connection queues for a peer that does not read is capped",
        (
            Edit(
                PROTOCOL,
                "        return self.limits.max_outbound_bytes - self.outbound_bytes\n",
                "        return 1 << 40\n",
            ),
        ),
        (
            f"{BACKPRESSURE}::test_a_peer_that_stops_reading_cannot_make_us_buffer",
            f"{BACKPRESSURE}::test_many_streams_answering_a_mute_peer_stay_within_the_outbound_cap",
        ),
    ),
    Mutation(
        "hello_deadline",
        "a connection without a session at the handshake deadline is closed (§14.4)",
        (
            Edit(
                SERVER,
                '        conn.close(ErrorCode.TIMEOUT, "no hello within the handshake deadline")\n',
                "        pass\n",
            ),
        ),
        (f"{ATTACKS}::test_requests_without_hello_do_not_hold_a_connection",),
    ),
    Mutation(
        "hello_deadline_armed_at_first_stream",
        "the hello deadline counts from the accept, whatever the peer sends (§14.4)",
        (Edit(SERVER, "            on_connection=self._arm_hello_deadline,\n", ""),),
        (
            f"{DEADLINES}::test_s14_4_no_hello_means_closed_at_the_handshake_deadline_from_the"
            "_accept",
        ),
    ),
    Mutation(
        "results_not_counted_against_outbound_cap",
        "finished results waiting to be written count against the outbound cap (§14.3.1)",
        (
            Edit(
                SERVER,
                "            size = _result_nbytes(model.graph, outs, tensors)\n",
                "            size = 0\n",
            ),
        ),
        (f"{DEADLINES}::test_s14_3_finished_results_count_against_the_outbound_cap",),
    ),
    # -- the client's fallback and handoff --------------------------------------------------
    Mutation(
        "fallback_compiles_the_segment_whole",
        "a failed server segment runs on the local plan's compiled chunks, not as one new slice",
        (
            Edit(
                CLIENT,
                "        for piece in self.fallback_pieces(layers):\n",
                "        for piece in (layers,):\n",
            ),
        ),
        (
            "tests/integration/test_fallback_grid.py::test_a_failed_server_segment_runs_on_the"
            "_local_chunk_grid",
        ),
    ),
    Mutation(
        "fetched_layers_loaded_as_one_piece",
        "after a move, what was fetched loads in the previous plan's partition order (§15.4)",
        (
            Edit(
                "src/ionn_net/client/mobility.py",
                "        self._previous_partitions = self._state.partitions\n",
                "        self._previous_partitions = ()\n",
            ),
        ),
        (
            "tests/unit/test_mobility_move.py::test_fetched_layers_load_in_the_previous_plans"
            "_partition_order",
        ),
    ),
    Mutation(
        "pacer_counts_compressed_chunks_by_release",
        "the pacer counts as paced only the bytes paced streams wrote, compressed or not",
        (
            Edit(
                "src/ionn_net/aio/connection.py",
                "paced_written=paced)\n",
                ")\n",
            ),
        ),
        (
            "tests/integration/aio/test_aio_paced.py::test_the_pacer_tells_a_compressed_upload"
            "_from_the_queries_beside_it",
        ),
    ),
    Mutation(
        "quick_plan_never_replaced",
        "the strategy's plan replaces the quick plan's partitions not sent yet",
        (
            Edit(
                "src/ionn_net/client/session.py",
                "        if self._strategy_plan.pending:",
                "        if self._strategy_plan.pending and False:",
            ),
        ),
        (
            "tests/integration/test_upload_head_start.py::test_the_server_loads_a_quick_plan"
            "_while_the_strategy_still_plans",
        ),
    ),
    Mutation(
        "pacer_measures_a_slow_reader_as_the_path",
        "deliveries a closed receive window held back are only a lower bound of the path",
        (
            Edit(
                "src/ionn_net/aio/pacing.py",
                "        if self._reader_held(start, now):\n            return True\n",
                "",
            ),
        ),
        (
            "tests/unit/aio/test_aio_pacing_estimate.py::test_what_a_slow_reader_took_is_not"
            "_measured_as_the_path",
        ),
    ),
    Mutation(
        "pacer_ramp_ends_at_a_stall",
        "a stall's queue does not end the ramp at the stall's deliveries",
        (
            Edit(
                "src/ionn_net/aio/pacing.py",
                "        if not self._ramp_stalled(ramp, info, now):\n",
                "        if True:\n",
            ),
        ),
        (
            "tests/unit/aio/test_aio_pacing_estimate.py::test_a_stall_as_the_ramp_nears_the_link"
            "_does_not_end_it_at_the_stalls_rate",
        ),
    ),
    # -- the benchmark's run documents ------------------------------------------------------
    Mutation(
        "run_doc_check_result",
        "check_run_doc returns the document it checked (or raises)",
        (
            Edit(
                RESULTS,
                "    return doc\n\n\ndef _check_query(",
                "    return {}\n\n\ndef _check_query(",
            ),
        ),
        ("tests/unit/bench/test_results.py::test_valid_documents_pass_the_layout_check",),
    ),
)
