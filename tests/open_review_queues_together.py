"""A process of test_improvement_loop's race test, kept apart so that spawning it imports SQLAlchemy, not
the serving stack: each worker opens every queue in turn, all of them at the same signal."""


def open_each_at_the_signal(urls: list[str], images: str, start, answers) -> None:
    from fashion.feedback.store import ReviewStore

    for url in urls:
        start.wait()
        try:
            store = ReviewStore(url, images)
            answers.put((url, store.queued()))
            store.engine.dispose()
        except Exception as err:   # noqa: BLE001 - what each process met is the result
            answers.put((url, f"{type(err).__name__}: {err}"[:200]))
