"""Quantitative skeletons: rates, proportional splits, percentages and base rates.

Every logical form is a flat object of non-negative integers (plus a predicate index
or a flag), and every answer is recomputed with exact fractions, so an answer is a
whole number exactly when the logical form is consistent. The draws pick only values
whose every intermediate step is a whole number, because the rationales show each
step and a tiny model should not have to round.
"""

from __future__ import annotations

from fractions import Fraction
from functools import lru_cache

from iga_theory.llm.isomers_base import (
    Draws, Skeleton, answer_line, as_bool, as_int, integer_answer, join_sentences, require,
    with_article,
)
from iga_theory.llm.isomers_lexicons import MIN_PREDICATES, Lexicon

# Upper bound on every count in a logical form read from a file.
MAX_COUNT = 10**9

# Value grids of the draws; small numbers keep the vocabulary of numerals modest.
RATE_RANGE = (2, 15)
TIME_RANGE = (2, 6)
START_RANGE = (2, 30)
STEPS_RANGE = (2, 9)
RATIO_RANGE = (1, 5)
SHARE_MULTIPLIER_RANGE = (2, 30)
PERCENT_GRID = (10, 20, 25, 30, 40, 50, 60, 70, 75, 80, 90)
CHANGE_GRID = (10, 20, 25, 50)
POPULATION_GRID = (100, 200, 400, 500)
BASE_GRID = (10, 20, 25, 40, 50)
HIT_GRID = (50, 60, 75, 80, 90, 100)
FALSE_ALARM_GRID = (5, 10, 20, 25, 50)


def _count(variables: dict, key: str, low: int = 0, high: int = MAX_COUNT) -> int:
    return as_int(require(variables, key), f"variables[{key!r}]", low, high)


def _percent(variables: dict, key: str) -> int:
    return _count(variables, key, 0, 100)


def _predicate(variables: dict, lexicon: Lexicon) -> str:
    index = _count(variables, "predicate")
    if index >= len(lexicon.predicates):
        raise ValueError(f"predicate index {index} is outside the {lexicon.domain} lexicon "
                         f"({len(lexicon.predicates)} predicates)")
    return lexicon.predicates[index]


def _of(whole: int, percent: int) -> int:
    """Return ``percent`` percent of ``whole``; the draws make it whole."""
    return whole * percent // 100


# -- rate, two phases ----------------------------------------------------------------


def solve_rate_total(variables: dict) -> str:
    """Return ``rate_1 * time_1 + rate_2 * time_2``."""
    total = sum(_count(variables, f"rate_{k}") * _count(variables, f"time_{k}") for k in (1, 2))
    return str(total)


def render_rate_total(variables: dict, lexicon: Lexicon) -> tuple[str, str]:
    """Render "<agent> <verb>s r1 units per time for t1, then r2 for t2; total?"."""
    r1, t1, r2, t2 = (_count(variables, key) for key in ("rate_1", "time_1", "rate_2", "time_2"))
    unit, per, times = lexicon.rate_unit, lexicon.time_unit, lexicon.time_units
    question = join_sentences([
        f"{lexicon.rate_agent} {lexicon.rate_verb} {r1} {unit} per {per} for {t1} {times}, "
        f"then {r2} {unit} per {per} for {t2} {times}",
        f"how many {unit} is that in total?",
    ])
    answer = solve_rate_total(variables)
    rationale = join_sentences([
        f"first: {r1} * {t1} = {r1 * t1} {unit}",
        f"then: {r2} * {t2} = {r2 * t2} {unit}",
        f"total: {r1 * t1} + {r2 * t2} = {answer} {unit}",
    ])
    return question, rationale + " " + answer_line(answer)


def draw_rate_total(draws: Draws, target: str | None) -> dict:
    """Draw two rate phases from `RATE_RANGE` and `TIME_RANGE`."""
    return {"rate_1": draws.integer(*RATE_RANGE), "time_1": draws.integer(*TIME_RANGE),
            "rate_2": draws.integer(*RATE_RANGE), "time_2": draws.integer(*TIME_RANGE)}


# -- rate, solved for the time -------------------------------------------------------


def solve_rate_inverse(variables: dict) -> str:
    """Return the time ``(target - start) / rate`` needed to grow from start to target."""
    start, target = _count(variables, "start"), _count(variables, "target")
    rate = _count(variables, "rate", 1)
    if target < start:
        raise ValueError(f"variables['target'] = {target} is below variables['start'] = {start}")
    return integer_answer(Fraction(target - start, rate), "the time (target - start) / rate")


def render_rate_inverse(variables: dict, lexicon: Lexicon) -> tuple[str, str]:
    """Render "<agent> has s units and <verb>s r per time; after how long does it have q?"."""
    start, rate, target = (_count(variables, key) for key in ("start", "rate", "target"))
    unit = lexicon.rate_unit
    answer = solve_rate_inverse(variables)
    question = join_sentences([
        f"{lexicon.rate_agent} has {start} {unit} and {lexicon.rate_verb} {rate} {unit} "
        f"per {lexicon.time_unit}",
        f"after how many {lexicon.time_units} does it have {target} {unit}?",
    ])
    rationale = join_sentences([
        f"needed: {target} - {start} = {target - start} {unit}",
        f"{lexicon.time_units}: {target - start} / {rate} = {answer}",
    ])
    return question, rationale + " " + answer_line(answer)


def draw_rate_inverse(draws: Draws, target: str | None) -> dict:
    """Draw a start, a rate and a whole number of time steps to the target."""
    start, rate = draws.integer(*START_RANGE), draws.integer(*RATE_RANGE)
    steps = draws.integer(*STEPS_RANGE)
    return {"start": start, "rate": rate, "target": start + steps * rate}


# -- proportional split --------------------------------------------------------------


def _ratio(variables: dict) -> tuple[int, int]:
    value = require(variables, "ratio")
    if not isinstance(value, list) or len(value) != 2:
        raise ValueError(f"variables['ratio'] must be [a, b]; got {value!r}")
    a = as_int(value[0], "variables['ratio'][0]", 1, MAX_COUNT)
    b = as_int(value[1], "variables['ratio'][1]", 1, MAX_COUNT)
    return a, b


def solve_split(variables: dict) -> str:
    """Return share ``ask`` of ``total`` split in the ratio ``a : b``: total * ratio[ask] / (a + b)."""
    total = _count(variables, "total")
    ratio = _ratio(variables)
    ask = _count(variables, "ask", 0, 1)
    return integer_answer(Fraction(total * ratio[ask], sum(ratio)), "the requested share")


def render_split(variables: dict, lexicon: Lexicon) -> tuple[str, str]:
    """Render "A <quantity> of T units is split between X and Y in the ratio a to b"."""
    total, (a, b), ask = _count(variables, "total"), _ratio(variables), _count(variables, "ask", 0, 1)
    unit, (first, second) = lexicon.quantity_unit, lexicon.recipients
    answer = solve_split(variables)
    question = join_sentences([
        f"{with_article(lexicon.quantity)} of {total} {unit} is split between {first} and "
        f"{second} in the ratio {a} to {b}",
        f"how many {unit} go to {(first, second)[ask]}?",
    ])
    part = Fraction(total, a + b)
    rationale = join_sentences([
        f"parts: {a} + {b} = {a + b}",
        f"one part: {total} / {a + b} = {integer_answer(part, 'one part')} {unit}",
        f"{(first, second)[ask]}: {(a, b)[ask]} * {integer_answer(part, 'one part')} = {answer} {unit}",
    ])
    return question, rationale + " " + answer_line(answer)


def draw_split(draws: Draws, target: str | None) -> dict:
    """Draw a ratio of two different parts and a total that divides into whole parts."""
    a, b = draws.sample(range(RATIO_RANGE[0], RATIO_RANGE[1] + 1), 2)
    total = (a + b) * draws.integer(*SHARE_MULTIPLIER_RANGE)
    return {"total": total, "ratio": [a, b], "ask": draws.integer(0, 1)}


# -- percent of a group --------------------------------------------------------------


def solve_percent_of(variables: dict) -> str:
    """Return ``percent`` percent of ``total``, or the rest when ``ask_complement``."""
    total, percent = _count(variables, "total"), _percent(variables, "percent")
    part = Fraction(total * percent, 100)
    complement = as_bool(require(variables, "ask_complement"), "variables['ask_complement']")
    return integer_answer(total - part if complement else part, "the requested count")


def render_percent_of(variables: dict, lexicon: Lexicon) -> tuple[str, str]:
    """Render "Of N <subjects>, p percent are <predicate>. How many are (not) <predicate>?"."""
    total, percent = _count(variables, "total"), _percent(variables, "percent")
    complement = as_bool(require(variables, "ask_complement"), "variables['ask_complement']")
    predicate, plural = _predicate(variables, lexicon), lexicon.subject_plural
    answer = solve_percent_of(variables)
    negation = "not " if complement else ""
    question = join_sentences([
        f"of {total} {plural}, {percent} percent are {predicate}",
        f"how many {plural} are {negation}{predicate}?",
    ])
    part = _of(total, percent)
    steps = [f"{predicate}: {total} * {percent} / 100 = {part}"]
    if complement:
        steps.append(f"not {predicate}: {total} - {part} = {answer}")
    return question, join_sentences(steps) + " " + answer_line(answer)


def draw_percent_of(draws: Draws, target: str | None) -> dict:
    """Draw a percent from `PERCENT_GRID` and a group size it divides into whole members."""
    percent = draws.choice(PERCENT_GRID)
    totals = [n for n in range(20, 201, 10) if n * percent % 100 == 0]
    return {"total": draws.choice(totals), "percent": percent,
            "predicate": draws.integer(0, MIN_PREDICATES - 1), "ask_complement": draws.coin()}


# -- percent change ------------------------------------------------------------------


def solve_percent_change(variables: dict) -> str:
    """Return ``start * (1 + rise/100) * (1 - fall/100)``."""
    start = _count(variables, "start")
    rise, fall = _count(variables, "rise", 0, 10**6), _percent(variables, "fall")
    value = Fraction(start) * Fraction(100 + rise, 100) * Fraction(100 - fall, 100)
    return integer_answer(value, "the final value")


def render_percent_change(variables: dict, lexicon: Lexicon) -> tuple[str, str]:
    """Render "A <quantity> of v units rises by x percent, then falls by y percent"."""
    start, rise, fall = (_count(variables, key) for key in ("start", "rise", "fall"))
    unit = lexicon.quantity_unit
    answer = solve_percent_change(variables)
    question = join_sentences([
        f"{with_article(lexicon.quantity)} of {start} {unit} rises by {rise} percent, then falls "
        f"by {fall} percent",
        f"how many {unit} is it now?",
    ])
    gain = _of(start, rise)
    middle = start + gain
    loss = _of(middle, fall)
    rationale = join_sentences([
        f"rise: {start} * {rise} / 100 = {gain}, so {start} + {gain} = {middle} {unit}",
        f"fall: {middle} * {fall} / 100 = {loss}, so {middle} - {loss} = {answer} {unit}",
    ])
    return question, rationale + " " + answer_line(answer)


@lru_cache(maxsize=None)
def _change_grid() -> tuple[tuple[int, int, int], ...]:
    """List every (start, rise, fall) whose intermediate values are whole numbers."""
    return tuple((start, rise, fall)
                 for start in range(20, 401, 10) for rise in CHANGE_GRID for fall in CHANGE_GRID
                 if start * rise % 100 == 0 and (start + _of(start, rise)) * fall % 100 == 0)


def draw_percent_change(draws: Draws, target: str | None) -> dict:
    """Draw a start value and two percent changes with whole intermediate values."""
    start, rise, fall = draws.choice(_change_grid())
    return {"start": start, "rise": rise, "fall": fall}


# -- conditional probability with a base rate ----------------------------------------


def _base_rate_counts(variables: dict) -> tuple[int, Fraction, Fraction, Fraction, Fraction]:
    population = _count(variables, "population", 1)
    base, hit, false_alarm = (_percent(variables, key)
                              for key in ("base_percent", "hit_percent", "false_alarm_percent"))
    with_condition = Fraction(population * base, 100)
    others = population - with_condition
    return population, with_condition, others, with_condition * Fraction(hit, 100), \
        others * Fraction(false_alarm, 100)


def solve_base_rate(variables: dict) -> str:
    """Return P(condition | flagged) in percent, by Bayes' rule on natural frequencies.

    ``100 * hits / (hits + false alarms)`` with ``hits = N b h / 10^4`` and
    ``false alarms = N (100 - b) f / 10^4`` for population N, base rate b, hit rate h
    and false-alarm rate f, all in percent.
    """
    _, _, _, hits, false_alarms = _base_rate_counts(variables)
    if hits + false_alarms == 0:
        raise ValueError("no member is flagged, so the share among the flagged is undefined")
    return integer_answer(100 * hits / (hits + false_alarms), "the percent among the flagged")


def render_base_rate(variables: dict, lexicon: Lexicon) -> tuple[str, str]:
    """Render a screening question with a base rate, a hit rate and a false-alarm rate."""
    population, with_condition, others, hits, false_alarms = _base_rate_counts(variables)
    base, hit, false_alarm = (variables[key] for key in
                              ("base_percent", "hit_percent", "false_alarm_percent"))
    predicate, plural = _predicate(variables, lexicon), lexicon.subject_plural
    answer = solve_base_rate(variables)
    question = join_sentences([
        f"of {population} {plural}, {base} percent are {predicate}",
        f"a test flags {hit} percent of the {predicate} {plural} and {false_alarm} percent of "
        "the others",
        f"what percent of the flagged {plural} are {predicate}?",
    ])
    counts = [integer_answer(value, "a count") for value in (with_condition, others, hits, false_alarms)]
    flagged = integer_answer(hits + false_alarms, "the flagged count")
    rationale = join_sentences([
        f"{predicate}: {population} * {base} / 100 = {counts[0]}",
        f"others: {population} - {counts[0]} = {counts[1]}",
        f"flagged {predicate}: {counts[0]} * {hit} / 100 = {counts[2]}",
        f"flagged others: {counts[1]} * {false_alarm} / 100 = {counts[3]}",
        f"flagged: {counts[2]} + {counts[3]} = {flagged}",
        f"share: 100 * {counts[2]} / {flagged} = {answer}",
    ])
    return question, rationale + " " + answer_line(answer)


@lru_cache(maxsize=None)
def _base_rate_grid() -> tuple[tuple[int, int, int, int], ...]:
    """List every grid point whose counts and posterior percent are whole numbers."""
    grid = []
    for population in POPULATION_GRID:
        for base in BASE_GRID:
            for hit in HIT_GRID:
                for false_alarm in FALSE_ALARM_GRID:
                    variables = {"population": population, "base_percent": base,
                                 "hit_percent": hit, "false_alarm_percent": false_alarm}
                    counts = _base_rate_counts(variables)
                    hits, false_alarms = counts[3], counts[4]
                    whole = all(value.denominator == 1 for value in counts[1:])
                    if whole and (100 * hits / (hits + false_alarms)).denominator == 1:
                        grid.append((population, base, hit, false_alarm))
    return tuple(grid)


@lru_cache(maxsize=None)
def _base_rate_grid_by_answer() -> tuple[tuple[tuple[int, int, int, int], ...], ...]:
    """`_base_rate_grid` grouped by posterior percent, in increasing order of it."""
    groups: dict[int, list] = {}
    for point in _base_rate_grid():
        keys = ("population", "base_percent", "hit_percent", "false_alarm_percent")
        groups.setdefault(int(solve_base_rate(dict(zip(keys, point)))), []).append(point)
    return tuple(tuple(groups[answer]) for answer in sorted(groups))


def draw_base_rate(draws: Draws, target: str | None) -> dict:
    """Draw a posterior percent uniformly, then a grid point with whole counts that gives it."""
    population, base, hit, false_alarm = draws.choice(draws.choice(_base_rate_grid_by_answer()))
    return {"population": population, "base_percent": base, "hit_percent": hit,
            "false_alarm_percent": false_alarm, "predicate": draws.integer(0, MIN_PREDICATES - 1)}


QUANT_SKELETONS: tuple[Skeleton, ...] = (
    Skeleton("rate_total", "quantitative", "integer",
             "amount produced at two rates over two time spans",
             draw_rate_total, solve_rate_total, render_rate_total),
    Skeleton("rate_inverse", "quantitative", "integer",
             "time for a rate to grow a start amount to a target",
             draw_rate_inverse, solve_rate_inverse, render_rate_inverse),
    Skeleton("proportional_split", "quantitative", "integer",
             "one share of a total split in a ratio a to b",
             draw_split, solve_split, render_split),
    Skeleton("percent_of", "quantitative", "integer",
             "members of a group with (or without) a property given its percent",
             draw_percent_of, solve_percent_of, render_percent_of),
    Skeleton("percent_change", "quantitative", "integer",
             "value after a percent rise followed by a percent fall",
             draw_percent_change, solve_percent_change, render_percent_change),
    Skeleton("base_rate", "quantitative", "integer",
             "conditional probability from a base rate, a hit rate and a false-alarm rate",
             draw_base_rate, solve_base_rate, render_base_rate),
)
