"""``overnight eval``: a deployment's solve rate on SWE-bench-format instances, measured through its own pipeline.

Each instance becomes a normal task (created in the database as the API creates one, sent to the workers through
the broker); its patch is graded in a fresh sandbox started from the environment the task's set-up made
(``grade``); the results are a report and a predictions file in SWE-bench's format (``report``), and two reports
compare with confidence intervals (``compare``). See docs/eval.md."""
