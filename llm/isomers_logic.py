"""Deductive and relational skeletons: modus ponens and tollens, syllogisms, orderings.

Deductive logical form (``variables``), shared by three skeletons::

    {"facts": [[p, pol], ...], "rules": [[[p, pol], [q, pol]], ...], "query": p}

A literal ``[p, pol]`` states that predicate ``p`` (an index into the lexicon's
predicates) holds (``pol`` true) or fails (false) for the subject; a rule
``[antecedent, consequent]`` reads "if antecedent then consequent". The answer is
``yes`` when the query predicate is derived to hold and ``no`` when it is derived to
fail, by modus ponens and modus tollens.

Relational logical form: ``{"pairs": [[i, j], ...], ...}``, where pair ``[i, j]``
states that entity ``i`` stands above entity ``j`` under the lexicon's comparative
("is stronger than"); the relation is a strict order, so it is transitive and
asymmetric.
"""

from __future__ import annotations

from typing import Any

from iga_theory.llm.isomers_base import (
    NO, YES, Draws, Skeleton, answer_line, as_bool, as_int, as_list, join_sentences, require,
)
from iga_theory.llm.isomers_lexicons import MIN_ENTITIES, MIN_PREDICATES, Lexicon

# Bounds on a logical form read from a file; they keep the closure loops small.
MAX_RULES = 32
MAX_PAIRS = 32

Literal = tuple[int, bool]


# -- deductive logic ----------------------------------------------------------------


def _literal(value: Any, where: str) -> Literal:
    pair = as_list(value, where, 2)
    if len(pair) != 2:
        raise ValueError(f"{where} must be [predicate, polarity]; got {value!r}")
    return as_int(pair[0], f"{where}[0]"), as_bool(pair[1], f"{where}[1]")


def parse_deductive(variables: dict) -> tuple[list[Literal], list[tuple[Literal, Literal]], int]:
    """Validate a deductive logical form; return ``(facts, rules, query)``."""
    facts = [_literal(value, f"variables['facts'][{index}]")
             for index, value in enumerate(as_list(require(variables, "facts"), "variables['facts']", 1))]
    raw_rules = as_list(require(variables, "rules"), "variables['rules']", 1)
    if len(raw_rules) > MAX_RULES:
        raise ValueError(f"variables['rules'] has {len(raw_rules)} rules; at most {MAX_RULES} are supported")
    rules = []
    for index, value in enumerate(raw_rules):
        where = f"variables['rules'][{index}]"
        pair = as_list(value, where, 2)
        if len(pair) != 2:
            raise ValueError(f"{where} must be [antecedent, consequent]; got {value!r}")
        rules.append((_literal(pair[0], f"{where}[0]"), _literal(pair[1], f"{where}[1]")))
    query = as_int(require(variables, "query"), "variables['query']")
    return facts, rules, query


def derive(facts: list[Literal], rules: list[tuple[Literal, Literal]]) -> tuple[dict[int, bool], dict[int, tuple]]:
    """Close the facts under modus ponens and modus tollens.

    Returns ``known`` (predicate -> derived polarity) and ``reason`` (predicate ->
    ``("fact",)`` or ``(kind, rule_index, premise_predicate)`` with kind ``"mp"`` or
    ``"mt"``). Raises ValueError when the facts and rules contradict each other.
    """
    known: dict[int, bool] = {}
    reason: dict[int, tuple] = {}
    for predicate, polarity in facts:
        if known.get(predicate, polarity) != polarity:
            raise ValueError(f"the facts state predicate {predicate} both holds and fails")
        known[predicate] = polarity
        reason[predicate] = ("fact",)
    changed = True
    while changed:
        changed = False
        for index, ((a, a_pol), (c, c_pol)) in enumerate(rules):
            if known.get(a) == a_pol and c not in known:  # modus ponens
                known[c], reason[c] = c_pol, ("mp", index, a)
                changed = True
            elif c in known and known[c] != c_pol and a not in known:  # modus tollens
                known[a], reason[a] = not a_pol, ("mt", index, c)
                changed = True
    for index, ((a, a_pol), (c, c_pol)) in enumerate(rules):
        if known.get(a) == a_pol and c in known and known[c] != c_pol:
            raise ValueError(f"rule {index} contradicts the facts: its antecedent holds but its "
                             "consequent is derived to fail")
    return known, reason


def solve_deductive(variables: dict) -> str:
    """Return ``yes``/``no``: whether the query predicate is derived to hold or to fail."""
    facts, rules, query = parse_deductive(variables)
    known, _ = derive(facts, rules)
    if query not in known:
        raise ValueError(f"the query predicate {query} follows neither way from the facts and rules")
    return YES if known[query] else NO


def proof_steps(variables: dict) -> list[tuple]:
    """Return the derivation steps that the query needs, premises first."""
    facts, rules, query = parse_deductive(variables)
    _, reason = derive(facts, rules)
    steps: list[tuple] = []
    predicate = query
    while reason[predicate][0] != "fact":
        kind, rule_index, premise = reason[predicate]
        steps.append((kind, rule_index, premise, predicate))
        predicate = premise
    return steps[::-1]


def _state(subject: str, lexicon: Lexicon, literal: Literal, mood: str = "is") -> str:
    predicate, polarity = literal
    if predicate >= len(lexicon.predicates):
        raise ValueError(f"predicate index {predicate} is outside the {lexicon.domain} lexicon "
                         f"({len(lexicon.predicates)} predicates)")
    verbs = {"is": ("is", "is not"), "were": ("were", "were not"), "would": ("would be", "would not be")}
    return f"{subject} {verbs[mood][0 if polarity else 1]} {lexicon.predicates[predicate]}"


def _deductive_rationale(variables: dict, lexicon: Lexicon, subject: str) -> str:
    facts, rules, query = parse_deductive(variables)
    known, _ = derive(facts, rules)
    parts = []
    for kind, rule_index, premise, conclusion in proof_steps(variables):
        antecedent, consequent = rules[rule_index]
        premise_text = _state(subject, lexicon, (premise, known[premise]))
        conclusion_text = _state(subject, lexicon, (conclusion, known[conclusion]))
        if kind == "mp":
            parts.append(f"{premise_text}, so {conclusion_text}")
        else:
            parts.append(f"{premise_text}. If {_state(subject, lexicon, antecedent, 'were')}, "
                         f"{_state(subject, lexicon, consequent, 'would')}. So {conclusion_text}")
    return join_sentences(parts) + " " + answer_line(solve_deductive(variables))


def _conditional_question(variables: dict, lexicon: Lexicon) -> str:
    facts, rules, query = parse_deductive(variables)
    subject = f"the {lexicon.subject}"
    parts = [f"if {_state(subject, lexicon, a)}, then {_state(subject, lexicon, c)}" for a, c in rules]
    parts += [_state(subject, lexicon, fact) for fact in facts]
    parts.append(f"is {subject} {lexicon.predicates[query]}?")
    return join_sentences(parts)


def render_conditional(variables: dict, lexicon: Lexicon) -> tuple[str, str]:
    """Render a deductive form as if-then rules about "the <subject>"."""
    return _conditional_question(variables, lexicon), \
        _deductive_rationale(variables, lexicon, f"the {lexicon.subject}")


def render_syllogism(variables: dict, lexicon: Lexicon) -> tuple[str, str]:
    """Render a deductive form as "Every/No A <subject> is B" premises about "this <subject>"."""
    facts, rules, query = parse_deductive(variables)
    noun = lexicon.subject
    parts = []
    for index, ((a, a_pol), (c, c_pol)) in enumerate(rules):
        if not a_pol:
            raise ValueError(f"variables['rules'][{index}] has a negated antecedent, which a "
                             "syllogism premise cannot state")
        quantifier = "every" if c_pol else "no"
        parts.append(f"{quantifier} {lexicon.predicates[a]} {noun} is {lexicon.predicates[c]}")
    subject = f"this {noun}"
    parts += [_state(subject, lexicon, fact) for fact in facts]
    parts.append(f"is {subject} {lexicon.predicates[query]}?")
    return join_sentences(parts), _deductive_rationale(variables, lexicon, subject)


def _polarity_chain(draws: Draws, predicates: list[int], last: bool | None = None,
                    first: bool | None = None, positive: bool = False) -> list[list]:
    chain = [[p, True if positive else draws.coin()] for p in predicates]
    if first is not None:
        chain[0][1] = first
    if last is not None:
        chain[-1][1] = last
    return chain


def _insert(draws: Draws, rules: list, rule: list) -> list:
    position = draws.integer(0, len(rules))
    return rules[:position] + [rule] + rules[position:]


def draw_modus_ponens(draws: Draws, target: str | None) -> dict:
    """Draw a 2-4 step modus ponens chain, plus an unreachable distractor rule half the time."""
    n_steps = draws.integer(2, 4)
    with_distractor = n_steps < 4 and draws.coin()  # keeps the question under 60 words
    predicates = draws.sample(range(MIN_PREDICATES), n_steps + 1 + 2 * with_distractor)
    chain = _polarity_chain(draws, predicates[:n_steps + 1], last=(target == YES))
    rules = [[chain[i], chain[i + 1]] for i in range(n_steps)]
    if with_distractor:
        # The distractor's antecedent is a fresh predicate, so it never fires.
        rules = _insert(draws, rules, [[predicates[-2], draws.coin()], [predicates[-1], draws.coin()]])
    return {"facts": [chain[0]], "rules": rules, "query": chain[-1][0]}


def draw_modus_tollens(draws: Draws, target: str | None) -> dict:
    """Draw a 1-2 step chain whose last consequent is denied; the query is its first antecedent."""
    n_steps = draws.integer(1, 2)
    with_distractor = draws.coin()
    predicates = draws.sample(range(MIN_PREDICATES), n_steps + 1 + 2 * with_distractor)
    # Denying the consequent refutes the antecedent literal, so the answer is yes exactly
    # when that literal is negated.
    chain = _polarity_chain(draws, predicates[:n_steps + 1], first=(target == NO))
    rules = [[chain[i], chain[i + 1]] for i in range(n_steps)]
    if with_distractor:
        rules = _insert(draws, rules, [[predicates[-2], draws.coin()], [predicates[-1], draws.coin()]])
    denied = [chain[-1][0], not chain[-1][1]]
    return {"facts": [denied], "rules": rules, "query": chain[0][0]}


def draw_syllogism(draws: Draws, target: str | None) -> dict:
    """Draw a 2-3 premise syllogism with exactly one negative ("No ...") premise.

    For answer no the last premise of the chain is negative; for answer yes the
    negative premise is a side branch off the chain that does not touch the query, so
    a negative premise occurs in every item and does not reveal the answer. The other
    answer gets a positive side branch, so both answers have the same premise count.
    """
    n_premises = draws.integer(2, 3)
    predicates = draws.sample(range(MIN_PREDICATES), n_premises + 2)
    chain = _polarity_chain(draws, predicates[:n_premises + 1], positive=True)
    chain[-1][1] = target == YES
    rules = [[chain[i], chain[i + 1]] for i in range(n_premises)]
    branch_from = draws.choice(chain[:-1])
    rules = _insert(draws, rules, [list(branch_from), [predicates[-1], target == NO]])
    return {"facts": [chain[0]], "rules": rules, "query": chain[-1][0]}


# -- relational logic ---------------------------------------------------------------


def parse_pairs(variables: dict) -> list[tuple[int, int]]:
    """Validate ``variables['pairs']``; return them as ``(above, below)`` tuples."""
    raw = as_list(require(variables, "pairs"), "variables['pairs']", 1)
    if len(raw) > MAX_PAIRS:
        raise ValueError(f"variables['pairs'] has {len(raw)} pairs; at most {MAX_PAIRS} are supported")
    pairs = []
    for index, value in enumerate(raw):
        where = f"variables['pairs'][{index}]"
        pair = as_list(value, where, 2)
        if len(pair) != 2:
            raise ValueError(f"{where} must be [above, below]; got {value!r}")
        pairs.append((as_int(pair[0], f"{where}[0]"), as_int(pair[1], f"{where}[1]")))
    return pairs


def order_closure(pairs: list[tuple[int, int]]) -> set[tuple[int, int]]:
    """Return the transitive closure of ``pairs``; raise ValueError on a cycle."""
    closure = set(pairs)
    changed = True
    while changed:
        extra = {(a, d) for a, b in closure for c, d in closure if b == c} - closure
        closure |= extra
        changed = bool(extra)
    cycle = sorted(a for a, b in closure if a == b)
    if cycle:
        raise ValueError(f"the pairs form a cycle through entity {cycle[0]}; a strict order has none")
    return closure


def _parse_query(variables: dict) -> tuple[int, int]:
    value = as_list(require(variables, "query"), "variables['query']", 2)
    if len(value) != 2:
        raise ValueError(f"variables['query'] must be [first, second]; got {value!r}")
    return as_int(value[0], "variables['query'][0]"), as_int(value[1], "variables['query'][1]")


def solve_transitivity(variables: dict) -> str:
    """Return ``yes`` when the first query entity is above the second, ``no`` when below."""
    closure = order_closure(parse_pairs(variables))
    first, second = _parse_query(variables)
    if (first, second) in closure:
        return YES
    if (second, first) in closure:
        return NO
    raise ValueError(f"the pairs do not order entities {first} and {second}")


def _entity(lexicon: Lexicon, index: int) -> str:
    if index >= len(lexicon.entities):
        raise ValueError(f"entity index {index} is outside the {lexicon.domain} lexicon "
                         f"({len(lexicon.entities)} entities)")
    return lexicon.entities[index]


def _above(lexicon: Lexicon, a: int, b: int, negated: bool = False) -> str:
    verb = "is not" if negated else "is"
    return f"{_entity(lexicon, a)} {verb} {lexicon.comparative} {_entity(lexicon, b)}"


def _path(pairs: list[tuple[int, int]], start: int, end: int) -> list[int]:
    """Return the entities of a chain of stated pairs from ``start`` down to ``end``."""
    below = {a: [b for x, b in pairs if x == a] for a, _ in pairs}
    frontier, parent = [start], {start: None}
    while frontier:
        node = frontier.pop(0)
        for child in below.get(node, []):
            if child not in parent:
                parent[child] = node
                frontier.append(child)
    chain = [end]
    while parent[chain[-1]] is not None:
        chain.append(parent[chain[-1]])
    return chain[::-1]


def render_transitivity(variables: dict, lexicon: Lexicon) -> tuple[str, str]:
    """Render stated pairs and a query "Is A <comparative> B?"."""
    pairs = parse_pairs(variables)
    first, second = _parse_query(variables)
    answer = solve_transitivity(variables)
    question = join_sentences([_above(lexicon, a, b) for a, b in pairs]
                              + [f"is {_entity(lexicon, first)} {lexicon.comparative} "
                                 f"{_entity(lexicon, second)}?"])
    top, bottom = (first, second) if answer == YES else (second, first)
    chain = _path(pairs, top, bottom)
    parts = [_above(lexicon, chain[0], chain[1])] if len(chain) == 2 else []
    for index in range(1, len(chain) - 1):
        # The first step restates both premises; later steps add one stated pair to
        # the conclusion of the step before.
        premises = f"{_above(lexicon, chain[0], chain[index])}, and " if index == 1 else ""
        parts.append(f"{premises}{_above(lexicon, chain[index], chain[index + 1])}, so "
                     f"{_above(lexicon, chain[0], chain[index + 1])}")
    if answer == NO:
        parts.append(f"so {_above(lexicon, first, second, negated=True)}")
    return question, join_sentences(parts) + " " + answer_line(answer)


def draw_transitivity(draws: Draws, target: str | None) -> dict:
    """Draw a chain of 3-5 entities, state its neighbours in random order, query two at least 2 apart."""
    n_entities = draws.integer(3, 5)
    chain = draws.sample(range(MIN_ENTITIES), n_entities)
    pairs = draws.shuffled([[chain[i], chain[i + 1]] for i in range(n_entities - 1)])
    gaps = [(i, j) for i in range(n_entities) for j in range(i + 2, n_entities)]
    i, j = draws.choice(gaps)
    query = [chain[i], chain[j]] if target == YES else [chain[j], chain[i]]
    return {"pairs": pairs, "query": query}


def solve_rank(variables: dict) -> str:
    """Return how many entities stand above the target entity, as a canonical integer."""
    closure = order_closure(parse_pairs(variables))
    target = as_int(require(variables, "target"), "variables['target']")
    entities = {e for pair in closure for e in pair}
    if target not in entities:
        raise ValueError(f"variables['target'] = {target} occurs in no pair")
    unordered = sorted(e for e in entities - {target}
                       if (e, target) not in closure and (target, e) not in closure)
    if unordered:
        raise ValueError(f"the pairs do not order entity {unordered[0]} against the target {target}")
    return str(sum((e, target) in closure for e in entities))


def render_rank(variables: dict, lexicon: Lexicon) -> tuple[str, str]:
    """Render stated pairs and "How many of them are <comparative> X?"."""
    pairs = parse_pairs(variables)
    target = as_int(require(variables, "target"), "variables['target']")
    answer = solve_rank(variables)
    closure = order_closure(pairs)
    entities = {e for pair in closure for e in pair}
    # In a total order the entity with the most entities above it is the lowest.
    ranked = sorted(sorted(entities), key=lambda e: sum((x, e) in closure for x in entities))
    question = join_sentences([_above(lexicon, a, b) for a, b in pairs]
                              + [f"how many of them are {lexicon.comparative} {_entity(lexicon, target)}?"])
    names = [_entity(lexicon, e) for e in ranked]
    above = names[:ranked.index(target)]
    parts = [f"from the top: {', '.join(names)}",
             f"before {_entity(lexicon, target)}: {', '.join(above) if above else 'none'}",
             f"count: {answer}"]
    return question, join_sentences(parts) + " " + answer_line(answer)


def draw_rank(draws: Draws, target: str | None) -> dict:
    """Draw a total order of 3-5 entities stated by neighbours in random order, and a target."""
    n_entities = draws.integer(3, 5)
    chain = draws.sample(range(MIN_ENTITIES), n_entities)
    pairs = draws.shuffled([[chain[i], chain[i + 1]] for i in range(n_entities - 1)])
    return {"pairs": pairs, "target": draws.choice(chain)}


LOGIC_SKELETONS: tuple[Skeleton, ...] = (
    Skeleton("modus_ponens_chain", "deductive", "yes_no",
             "if-then chain of 2-4 steps applied forwards, sometimes with a distractor rule",
             draw_modus_ponens, solve_deductive, render_conditional),
    Skeleton("modus_tollens", "deductive", "yes_no",
             "if-then chain of 1-2 steps whose consequent is denied, answered backwards",
             draw_modus_tollens, solve_deductive, render_conditional),
    Skeleton("syllogism_negation", "deductive", "yes_no",
             "2-3 quantified premises with one negative premise",
             draw_syllogism, solve_deductive, render_syllogism),
    Skeleton("transitivity_chain", "relational", "yes_no",
             "3-5 entities ordered by stated neighbours; compare two of them",
             draw_transitivity, solve_transitivity, render_transitivity),
    Skeleton("ordering_rank", "relational", "integer",
             "3-5 entities ordered by stated neighbours; count those above one",
             draw_rank, solve_rank, render_rank),
)
