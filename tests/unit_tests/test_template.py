from bpo_integrations import BPO_TEMPLATE, format_bpo_prompt
from bpo_integrations.template import format_bpo_message, join_context


def test_template_is_the_papers_exactly() -> None:
    assert format_bpo_prompt("Tell me about Harry Potter") == (
        "[INST] You are an expert prompt engineer. Please help me improve this prompt to get a more "
        "helpful and harmless response:\nTell me about Harry Potter [/INST]"
    )
    assert BPO_TEMPLATE.count("{prompt}") == 1


def test_chat_message_is_the_instruction_without_inst_markers() -> None:
    message = format_bpo_message("hi")
    assert "[INST]" not in message
    assert format_bpo_prompt("hi") == f"[INST] {message} [/INST]"


def test_context_is_joined_verbatim_after_the_instruction() -> None:
    assert (
        join_context("Summarize this.", "Line 1\n\nLine 2") == "Summarize this.\nLine 1\n\nLine 2"
    )
    assert join_context("Just this.", None) == "Just this."
    assert join_context("Just this.", "") == "Just this."
