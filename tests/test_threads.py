"""The thread chooser: which counts it tries, that it keeps the fastest with the switch's own step left out, that it
follows a neighbour who comes and goes, and that disabled it changes nothing."""
import pytest

from vqmnist.running import machine as threads
from vqmnist.running.machine import ThreadChooser, candidate_counts


@pytest.mark.parametrize("cores, counts", [(1, [1]), (2, [2, 1]), (4, [4, 3, 2]), (16, [16, 15, 8])])
def test_candidates_are_all_one_fewer_and_half(cores, counts):
    assert candidate_counts(cores) == counts


class FakeMachine:
    """A step takes seconds[threads], and the first step after a change of count takes switch_cost more."""

    def __init__(self, seconds: dict[int, float], switch_cost: float = 0.0, threads: int = 2):
        self.seconds, self.switch_cost, self.threads = seconds, switch_cost, threads
        self.now, self.pending, self.calls = 0.0, 0.0, []

    def clock(self) -> float:
        return self.now

    def set_threads(self, count: int) -> None:
        self.pending += self.switch_cost if count != self.threads else 0.0
        self.threads = count
        self.calls.append(count)

    def train(self, chooser: ThreadChooser, steps: int) -> None:
        for _ in range(steps):
            self.now += self.seconds[self.threads] + self.pending
            self.pending = 0.0
            chooser.step_done()


def chooser_on(machine: FakeMachine, enabled: bool = True) -> ThreadChooser:
    return ThreadChooser(enabled, threads=2, clock=machine.clock, set_threads=machine.set_threads)


@pytest.mark.parametrize("seconds, fastest", [({2: 0.02, 1: 0.04}, 2), ({2: 0.10, 1: 0.03}, 1)])
@pytest.mark.parametrize("switch_cost", [0.0, 1.0])
def test_it_trains_on_at_the_fastest_count(seconds, fastest, switch_cost):
    machine = FakeMachine(seconds, switch_cost)
    chooser = chooser_on(machine)
    machine.train(chooser, 2 * (threads.PROBE_STEPS + 1) + 1)
    assert machine.calls[:2] == [2, 1], "each candidate is timed, most threads first"
    assert chooser.chosen == fastest and machine.threads == fastest
    assert chooser.step_times[fastest] == pytest.approx(seconds[fastest]), "the switch's step is not timed"


def test_it_probes_again_and_follows_a_neighbour_who_leaves():
    machine = FakeMachine({2: 0.10, 1: 0.03})  # another program keeps a core busy
    chooser = chooser_on(machine)
    machine.train(chooser, 100)
    assert machine.threads == 1
    assert chooser.next_probe - machine.now <= threads.PROBE_PERIOD_SECONDS
    machine.seconds = {2: 0.02, 1: 0.04}  # it has finished
    while machine.now + 0.04 < chooser.next_probe:
        machine.train(chooser, 1)
    assert machine.threads == 1, "no probe before the period is over"
    machine.train(chooser, 2 * (threads.PROBE_STEPS + 1) + 1)
    assert machine.threads == 2 and chooser.chosen == 2


def test_disabled_it_never_changes_the_count():
    machine = FakeMachine({2: 0.10, 1: 0.03})
    machine.train(chooser_on(machine, enabled=False), 100)
    assert machine.calls == [] and machine.threads == 2
