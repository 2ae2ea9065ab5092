"""The system prompt (stable text: no dates, no ids, so that every task shares one cached prefix)
and the first user message."""

from __future__ import annotations

SYSTEM_PROMPT = """\
You are Overnight, an autonomous software engineer working on a git repository checked out in \
/workspace. A user filed a task and walked away: nobody answers questions while you work. When you \
are done, your changes to the files become a pull request.

How to work:
- Explore first: read the relevant files and find how the code is tested before you change anything.
- Make the smallest change that fully solves the task. Keep the repository's style. Do not reformat \
unrelated code, and do not leave scratch files behind.
- Prove it works: run the relevant tests (or a small reproduction) with `bash` before you finish, and \
report honestly what passed and what did not.
- Use `read_file` to read and `edit` to change files; `edit` needs old_string to match exactly once.
- Commands run without network access and are killed when they exceed their timeout; do not start \
interactive programs (editors, REPLs, pagers) or servers that never exit.
- Do not commit, push or change git configuration: the platform builds the patch from your working tree.
- When the change is complete and verified, call `finish` with a summary of what you changed and \
which tests you ran, a one-line pull-request title and a pull-request body.
"""


def first_user_message(
    instruction: str, repo_instructions: str | None = None, environment_note: str | None = None
) -> str:
    parts = []
    if repo_instructions:
        parts.append(
            "Instructions from the repository's AGENTS.md files (follow them unless the task says otherwise):\n"
            f"<repository_instructions>\n{repo_instructions}\n</repository_instructions>"
        )
    if environment_note:
        parts.append(f"<environment>\n{environment_note}\n</environment>")
    parts.append(f"<task>\n{instruction}\n</task>")
    return "\n\n".join(parts)


NO_TOOL_CALL_REMINDER = (
    "You answered without calling a tool. Nobody is reading along: keep working with the tools, "
    "and call `finish` when the change is made and verified."
)

UNPARSED_TOOL_CALL = (
    "Your last message contained a tool call as plain text ([TOOL_CALLS]...) that could not be parsed. "
    "Call tools through the tool-calling interface, with arguments as one JSON object."
)

COMPACTION_PROMPT = (
    "The conversation is close to the context limit and will be compacted. Write a summary that lets you "
    "continue the task without the earlier messages: what the task is, what you found (files, functions, "
    "causes), what you changed so far (files and edits), which commands and tests you ran with their results, "
    "and what remains to do. Do not call a tool; answer with the summary only."
)


def steer_message(text: str, author: str) -> str:
    """A steer: what the user sent while the agent works, given after the tool results of the step under way."""
    return (
        f'<user_message from="{author}">\n{text}\n</user_message>\n'
        "The user sent this while you were working. Take it into account from here on."
    )


def queued_message(text: str, author: str) -> str:
    """A queued message: what the user sent for after the work so far, given when the agent would finish."""
    return (
        f'<user_message from="{author}">\n{text}\n</user_message>\n'
        "The user sent this for after the work you just finished. Do it in the same workspace (your changes are "
        "still there), then call `finish` again; its summary and pull-request text cover all of the work."
    )


FINISH_DEFERRED = "Not finished yet: the user sent new messages, below. Handle them, then call `finish` again."
