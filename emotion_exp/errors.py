"""The one error type for mistakes a user can fix."""


class UserError(Exception):
    """Bad input or a bad parameter: what was expected, what was found, how to fix it.

    The CLI prints the message as one sentence and exits non-zero without a traceback
    (``--debug`` or ``EMOTION_EXP_DEBUG=1`` shows it); an MLflow run that was open ends FAILED
    with the message as its ``error`` tag.
    """


class EndedEarly(Exception):
    """A run stopped on purpose before it finished (a sweep's pruner gave up on it): no failure.

    ``tracking.stage_run`` ends the run KILLED with ``reason`` as its ``error`` tag and ``tags``
    added (``pruned=true``), and keeps everything it logged.
    """

    def __init__(self, reason: str, tags: dict[str, str]) -> None:
        super().__init__(reason)
        self.tags = tags


class Terminated(KeyboardInterrupt):
    """The process got SIGTERM (``kill``, a scheduler, ``mlflow run`` cancelling its entry point).

    A ``KeyboardInterrupt``, so every stage stops as on Ctrl-C and its run ends KILLED, with
    this message as the ``error`` tag.
    """
