"""The built-in demo job of ``shoal run`` (with no arguments): word statistics per line.

``word_stats`` is an ordinary function of one item; ``SAMPLE_LINES`` holds the
embedded input, a short original text of 197 lines. ``shoal run`` with no
arguments runs the one over the other, writes ``shoal-demo-output.jsonl`` and
checkpoints to ``shoal-demo.db``; run it twice and the second run restores
every result from the checkpoint instead of computing it.
"""

from __future__ import annotations

import string
from typing import Any

__all__ = ["SAMPLE_LINES", "word_stats"]

_VOWELS = frozenset("aeiouAEIOU")
_PUNCTUATION = frozenset(string.punctuation)


def word_stats(line: str) -> dict[str, Any]:
    """Count words, unique words (case-folded, punctuation stripped) and characters.

    Raises:
        TypeError: ``line`` is not a string (e.g. a JSON number from ``--input``).
    """
    if not isinstance(line, str):
        raise TypeError(f"word_stats takes a line of text, got {type(line).__name__}")
    tokens = line.split()
    words = [w for w in (t.strip(string.punctuation).casefold() for t in tokens) if w]
    return {
        "words": len(tokens),
        "unique_words": len(set(words)),
        "longest_word": max(words, key=len, default=""),
        "chars": len(line),
        "letters": sum(c.isalpha() for c in line),
        "digits": sum(c.isdigit() for c in line),
        "vowels": sum(c in _VOWELS for c in line),
        "punctuation": sum(c in _PUNCTUATION for c in line),
    }


SAMPLE_TEXT = """\
A shoal of small fish turns at once, and nobody gives the order.
Each fish watches only its neighbours, yet the whole group moves as one.
Work spread over many hands finishes sooner, if the hands do not collide.
The river does not hurry, but it reaches the sea every time.
Count the items before you start, and count them again at the end.
A batch that cannot be resumed is a batch you will run twice.
Write down what you finished, so that a crash costs minutes, not hours.
The slowest item decides when the last worker goes home.
One thread waits on the network while another reads a file from disk.
A process has its own memory, so nothing it does can corrupt its neighbour.
Retry the request that timed out, but give the server a moment to breathe.
Three attempts are usually enough; thirty are usually a bug.
The queue was long, the workers were few, and the coffee was cold.
Every record deserves exactly one answer, no more and no fewer.
When the input ends, the pool drains, and the report is written.
Failures are data: keep them, count them, and read them in the morning.
A progress bar that never moves is worse than no progress bar at all.
The estimate of time remaining improved as the run went on.
Small items are cheaper to run inline than to hand to a worker.
Large items are worth the trip across the process boundary.
The checkpoint file grew by a few kilobytes every second.
Nothing was lost when the power went out, because everything was committed.
She restarted the job and watched it skip the work already done.
The log said two hundred items, two hundred results, zero surprises.
Rate limits protect the service that you are calling from yourself.
Ten requests a second is polite; ten thousand is a denial of service.
The cache answered most questions before the network was even asked.
Some lines are short.
Others wander on, adding clause after clause, until the reader forgets how they began.
Numbers like 42, 1024 and 65535 appear in the strangest places.
The first worker started at nine; the last one finished at five past nine.
Ordering results by input position makes the output easy to compare.
Completion order is faster to stream but harder to read.
A generator yields one item at a time, so memory stays flat.
Reading the whole file into a list works until the file is larger than memory.
The team measured before optimizing, and found the bottleneck in an unexpected place.
Threads help when the program waits; processes help when the program thinks.
The global interpreter lock is released during most input and output.
Pickling a function sends its name, not its code, unless told otherwise.
A lambda defined in a notebook cell needs special care to travel.
The benchmark ran the same work on every backend and printed the ratios.
Speedup is the sequential time divided by the parallel time.
Efficiency is the speedup divided by the number of workers.
Perfect efficiency is rare; ninety percent is excellent.
The fish do not know they are a shoal; they only know where the others are.
Salmon swim upstream, which is a poor model for a data pipeline.
Herring gather in the millions, and still each one finds room to swim.
The estuary is where fresh water meets salt water and both are changed.
A tributary joins the main channel without asking for permission.
Downstream, the current carries whatever the upstream stages produced.
Backpressure keeps a fast producer from drowning a slow consumer.
A bounded queue is a promise that memory will not run out.
The producer paused when the buffer was full and resumed when it drained.
Every worker pulls its next task only when it is ready for one.
Pushing work at a busy worker only builds a queue in the wrong place.
The scheduler kept a heap of deadlines and woke up for the earliest one.
Timeouts are per item, so one slow request cannot stall the batch.
A hung call was abandoned, its worker replaced, and the batch went on.
The crashed process took one item with it; the rest were sent elsewhere.
Exit code minus nine means the process was killed by a signal.
Out of memory is the most honest error a computer can give.
The disk filled up at three in the morning, as disks tend to do.
Logs are for people; metrics are for dashboards; results are for everyone.
JSON lines are easy to append, easy to stream and easy to grep.
A CSV file has a header, and every row should agree with it.
Plain text is the oldest format and still one of the most useful.
The input had a broken line, and only that line failed.
Line seventeen was missing a closing brace.
Validation at the edge keeps nonsense out of the core.
Clear error messages save more time than clever code.
Say what went wrong, where it went wrong, and how to fix it.
A stack trace is a gift to a developer and a riddle to a user.
The command printed one line and exited with status two.
Usage errors deserve a hint, not a wall of text.
The default settings should do something sensible on the first try.
Good defaults are documentation that the user never has to read.
The demo ran in under a second and left a report behind.
Run it twice, and the second run restores every result from the checkpoint.
Delete the checkpoint to start from scratch.
The output file appeared only when the run was complete.
Half a file that claims to be whole is worse than no file at all.
Write to a temporary name, then rename, and readers never see a torn file.
Renaming within one directory is atomic on every common filesystem.
The partial file was left behind after the crash, clearly marked as partial.
Words are counted by splitting on whitespace, which is simple and fast.
Unique words are counted after folding to lower case.
Punctuation clings to words unless it is stripped away.
The longest word in this line is uncharacteristically long.
Vowels and consonants share the alphabet in uneven measure.
Quiet lines carry little information.
Loud lines carry more, or at least they seem to!
Questions end with a question mark, don't they?
Semicolons join clauses; colons introduce lists: apples, pears, plums.
Parentheses (like these) hold asides that the reader may skip.
Quotation marks, "like these", mark words borrowed from elsewhere.
Accented letters such as café, naïve and façade are still letters.
Some writers prefer em dashes — others use plain hyphens - and few notice.
Tabs\tand\tspaces\tboth\tseparate\twords.
Trailing spaces at the end of a line are invisible but real.\x20\x20\x20
Digits such as 3.14159 and 2.71828 are not words, but they are tokens.
An email address like someone@example.org is a single token here.
A path like /var/log/syslog counts as one word too.
The lighthouse keeper logged every ship that passed in the night.
Tides rise and fall twice a day, as reliably as a cron job.
Fog rolled in over the harbour and the fishing boats stayed home.
The net came up heavy, silver with a thousand small fish.
Gulls followed the boat, confident that something would be thrown overboard.
At dawn the water was flat and the shoal was a dark cloud beneath it.
The fisherman counted his catch twice and got two different numbers.
A second count is an audit; a third count is a habit.
Reconciliation means the numbers agree, or you know why they do not.
The report listed totals, failures by type and the slowest items.
The median latency was low, but the tail was long.
The ninety-ninth percentile tells you what your unluckiest users see.
Averages hide outliers; percentiles reveal them.
An outlier is either an error or a discovery.
The interquartile range ignores the extremes and describes the middle.
A z-score says how many standard deviations a value is from the mean.
Small samples make every statistic wobble.
The confidence interval narrowed as more items completed.
Measure twice, cut once, and keep the measurements.
The second experiment contradicted the first, so they ran a third.
Reproducibility starts with a fixed seed and a recorded version.
A result you cannot reproduce is an anecdote.
Deterministic data made the test suite calm and predictable.
Flaky tests teach people to ignore failures.
The test waited on an event instead of sleeping, and it never flaked again.
Sleeping in a test is a guess about how fast the machine is.
Timeouts in tests catch deadlocks before they hang the build.
A deadlock is two polite people each waiting for the other to go first.
A race condition is two impolite people reaching for the same door.
Locks guard data, not code, and every lock should say what it guards.
Immutable objects need no locks at all.
Shared state is where concurrency bugs like to live.
Passing messages is slower than sharing memory, and much easier to reason about.
The worker sent its result home and forgot about it.
The driver owned the dictionary; workers only sent messages.
A pool of eight threads made light work of a thousand slow requests.
Two processes on two cores halved the time of a heavy computation.
Adding a third process to two cores only added overhead.
More workers than cores helps only when the workers mostly wait.
The machine had two cores, shared with several colleagues.
A quiet machine gives clean benchmarks; a busy one gives humble ones.
The numbers from the laptop differed from the numbers from the server.
Always state the hardware when you report a benchmark.
The chart looked impressive until someone read the axis labels.
A logarithmic scale makes small differences look large and large ones small.
The library imported in milliseconds because it loaded its backends lazily.
Optional dependencies stay optional when they are imported only on use.
A missing extra should say which package to install.
The error message named the pip command, and the user fixed it in seconds.
Version numbers are promises about what will not change.
A changelog is a letter to your future self.
Deprecation warnings give users a season to adapt.
The old function still worked, but it pointed to the new one.
Renaming a parameter is easy for the author and painful for everyone else.
Names should say what a thing is, not where it came from.
A module of one concept is easier to read than a module of ten.
Six hundred lines is a comfortable upper bound for one file.
Docstrings explain why; the code already says what.
Comments that repeat the code grow stale the fastest.
Type hints turn some runtime errors into editor squiggles.
The type checker found a bug that three reviewers missed.
Linters argue about style so that people do not have to.
Continuous integration runs the tests on every push.
A green build is a small, reliable joy.
A red build on Friday evening is a lesson in humility.
The pull request was small, focused and merged before lunch.
Large pull requests get approved; small ones get reviewed.
Code review is a conversation, not an examination.
Pair programming halves the typing and doubles the thinking.
The best code is often the code you decided not to write.
Deleting a feature is sometimes the most valuable change.
Simple things should be simple; complex things should be possible.
The command line is still the fastest way to run a batch.
Pipes connect small tools into large pipelines.
Standard input and standard output make a program composable.
Exit codes let scripts decide what to do next.
Zero means success, and everything else means read the message.
Interrupted runs exit with one hundred and thirty by convention.
Pressing control and C sends an interrupt, not a kill.
A kill signal cannot be caught, so durability must already be in place.
Write-ahead logging keeps a database consistent across crashes.
Batched commits trade a little durability for a lot of speed.
The last half second of results may need to be computed again.
Recomputing a few items is cheaper than recomputing them all.
Idempotent functions can be retried without fear.
Side effects make retries dangerous, so make them idempotent.
The function wrote to a file, so running it twice wrote twice.
Counting calls through a side file revealed which items ran again.
Every finished item ran exactly once across both runs.
The summary reported two hundred items and no failures.
The evening shoal drifted toward deeper water.
Moonlight made the surface shine like scales.
Under the pier, a few latecomers hurried to catch up with the group.
By morning the shoal had moved on, and the bay was still.
The batch was done, the report was written, and the workers slept.
"""

SAMPLE_LINES: tuple[str, ...] = tuple(SAMPLE_TEXT.splitlines())
