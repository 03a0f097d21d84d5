"""Logs never carry phone numbers or ID numbers."""

from __future__ import annotations

import json
import logging

import structlog

from config.logs import MaskingFilter, mask_pii, mask_text


def test_mask_text_masks_phones_and_ids():
    text = "applicant 13812345678 id 11010519491231002X ok"
    assert mask_text(text) == "applicant 138****5678 id 110105********002X ok"


def test_mask_text_leaves_other_numbers_alone():
    assert mask_text("order 20261128 amount 50000.00 uuid 123456789012") == (
        "order 20261128 amount 50000.00 uuid 123456789012"
    )


def test_mask_text_leaves_digits_inside_a_hex_id_alone():
    # A request id once held "14173991725" between letters and was logged masked (a CI failure).
    request_id = "dbe030ae79b14173991725ca2b62c307"
    assert mask_text(f"request {request_id}") == f"request {request_id}"
    assert mask_text("手机13812345678，电话:13912345678") == "手机138****5678，电话:139****5678"


def test_structlog_events_are_masked_end_to_end(caplog):
    with caplog.at_level(logging.INFO):
        structlog.get_logger("spillway.test").warning(
            "sent to partner", phone="13812345678", extra={"id": "11010519491231002X"}, count=13812345678
        )
    line = caplog.records[-1].getMessage()
    assert "13812345678" not in line
    assert "11010519491231002X" not in line
    assert "138****5678" in line


def test_processor_masks_nested_values():
    event = mask_pii(None, "info", {"event": "x", "data": [{"phone": "15900001111"}]})
    assert json.dumps(event) == json.dumps({"event": "x", "data": [{"phone": "159****1111"}]})


def test_stdlib_records_are_masked():
    record = logging.LogRecord("x", logging.INFO, __file__, 1, "call %s", ("13812345678",), None)
    MaskingFilter().filter(record)
    assert record.getMessage() == "call 138****5678"
