"""Running test code under a time bound: a hang fails the test instead of stalling CI."""

import threading


def run_within(seconds, fn, what="it"):
    """fn() in a thread; fails the test if it has not returned (a hang) after `seconds`."""
    result = {}

    def target():
        try:
            result["value"] = fn()
        except BaseException as e:  # re-raised in the test's thread
            result["error"] = e

    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    thread.join(seconds)
    assert not thread.is_alive(), f"no result after {seconds} s: {what} hangs"
    if "error" in result:
        raise result["error"]
    return result["value"]
