"""Domain lexicons that render one logical skeleton as text in several domains.

A lexicon is the whole surface of a domain: the subject of the deductive skeletons and
its predicates, the entities and comparative of the relational skeletons, and the
agents, units and quantities of the quantitative skeletons. Every skeleton template
draws its domain words from a lexicon and nothing else, so two members of an isomer
set differ only in the lexicon that renders them.

The held-out lexicons (finance, sports) share no content word with the training
lexicons (mathematics, medicine, law, science) or with the skeleton templates, and
the tests check this. An OOD split is therefore unseen at the word level.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, fields

TRAINING_DOMAINS: tuple[str, ...] = ("mathematics", "medicine", "law", "science")
HELDOUT_DOMAINS: tuple[str, ...] = ("finance", "sports")
ALL_DOMAINS: tuple[str, ...] = TRAINING_DOMAINS + HELDOUT_DOMAINS

# Words that carry grammar, not domain content. They may occur in every domain and in
# every split. The templates' own logic vocabulary is listed in the skeleton modules.
FUNCTION_WORDS: frozenset[str] = frozenset(
    "a an the this that it its of to in on for by at and or not no is are was were be "
    "would than then if so does do has have how many what which after each every all "
    "them from with as".split()
)

_WORD = re.compile(r"[a-z]+")


def words_of(text: str) -> list[str]:
    """Split ``text`` into lowercase alphabetic words; digits and punctuation are dropped."""
    return _WORD.findall(text.lower())


@dataclass(frozen=True)
class Lexicon:
    """The surface words of one domain, as the skeleton templates use them.

    Attributes
    ----------
    domain : str
        Domain name (lowercase identifier), for example ``"medicine"``.
    subject, subject_plural : str
        Noun that the deductive skeletons reason about ("patient", "patients").
    predicates : tuple of str
        Adjectives that hold or fail for the subject; they must read both as
        "the patient is X" and as "every X patient". Logical forms index this tuple,
        so every lexicon has at least `MIN_PREDICATES` of them.
    entities : tuple of str
        Noun phrases ordered by the comparative ("aspirin", "the statute"); logical
        forms index this tuple, so every lexicon has at least `MIN_ENTITIES`.
    comparative : str
        Relation phrase between two entities, ending in "than" ("stronger than").
    rate_agent, rate_verb : str
        Agent and verb of the rate skeletons ("the drip", "delivers").
    rate_unit : str
        Plural unit counted by the rate skeletons ("ml").
    time_unit, time_units : str
        Singular and plural time unit of the rate skeletons ("hour", "hours").
    quantity, quantity_unit : str
        A divisible amount and its plural unit ("dose", "mg").
    recipients : tuple of str
        The two shares of a proportional split ("the morning", "the evening").
    """

    domain: str
    subject: str
    subject_plural: str
    predicates: tuple[str, ...]
    entities: tuple[str, ...]
    comparative: str
    rate_agent: str
    rate_verb: str
    rate_unit: str
    time_unit: str
    time_units: str
    quantity: str
    quantity_unit: str
    recipients: tuple[str, str]

    def content_words(self) -> frozenset[str]:
        """Return every word of this lexicon that is not a function word."""
        found: set[str] = set()
        for spec in fields(self):
            if spec.name == "domain":
                continue
            value = getattr(self, spec.name)
            texts = value if isinstance(value, tuple) else (value,)
            for text in texts:
                found.update(words_of(text))
        return frozenset(found - FUNCTION_WORDS)


# A four-step modus ponens chain with one distractor rule uses 5 + 2 predicates, and
# the relational skeletons order up to 5 entities.
MIN_PREDICATES = 8
MIN_ENTITIES = 6

LEXICONS: dict[str, Lexicon] = {
    "mathematics": Lexicon(
        domain="mathematics",
        subject="number", subject_plural="numbers",
        predicates=("even", "prime", "positive", "square", "cubic", "rational",
                    "bounded", "integral"),
        entities=("alpha", "beta", "gamma", "delta", "sigma", "omega"),
        comparative="greater than",
        rate_agent="the counter", rate_verb="adds", rate_unit="units",
        time_unit="step", time_units="steps",
        quantity="sum", quantity_unit="units",
        recipients=("the left term", "the right term"),
    ),
    "medicine": Lexicon(
        domain="medicine",
        subject="patient", subject_plural="patients",
        predicates=("feverish", "anemic", "diabetic", "infected", "contagious",
                    "dehydrated", "sedated", "asthmatic"),
        entities=("aspirin", "insulin", "morphine", "penicillin", "ibuprofen", "codeine"),
        comparative="stronger than",
        rate_agent="the drip", rate_verb="delivers", rate_unit="ml",
        time_unit="hour", time_units="hours",
        quantity="dose", quantity_unit="mg",
        recipients=("the morning", "the evening"),
    ),
    "law": Lexicon(
        domain="law",
        subject="contract", subject_plural="contracts",
        predicates=("valid", "binding", "notarized", "signed", "sealed", "written",
                    "lawful", "enforceable"),
        entities=("the statute", "the treaty", "the decree", "the ordinance",
                  "the regulation", "the bylaw"),
        comparative="older than",
        rate_agent="the clerk", rate_verb="files", rate_unit="cases",
        time_unit="day", time_units="days",
        quantity="estate", quantity_unit="acres",
        recipients=("the elder heir", "the younger heir"),
    ),
    "science": Lexicon(
        domain="science",
        subject="sample", subject_plural="samples",
        predicates=("acidic", "frozen", "magnetic", "heated", "stable", "radioactive",
                    "soluble", "porous"),
        entities=("iron", "copper", "zinc", "nickel", "tin", "cobalt"),
        comparative="heavier than",
        rate_agent="the pump", rate_verb="moves", rate_unit="liters",
        time_unit="minute", time_units="minutes",
        quantity="mass", quantity_unit="grams",
        recipients=("the left flask", "the right flask"),
    ),
    "finance": Lexicon(
        domain="finance",
        subject="loan", subject_plural="loans",
        predicates=("solvent", "secured", "taxable", "insured", "leveraged",
                    "profitable", "audited", "hedged"),
        entities=("the bond", "the stock", "the option", "the swap", "the warrant",
                  "the annuity"),
        comparative="riskier than",
        rate_agent="the account", rate_verb="earns", rate_unit="dollars",
        time_unit="month", time_units="months",
        quantity="profit", quantity_unit="dollars",
        recipients=("the senior partner", "the junior partner"),
    ),
    "sports": Lexicon(
        domain="sports",
        subject="player", subject_plural="players",
        predicates=("injured", "ranked", "seeded", "unbeaten", "suspended", "qualified",
                    "benched", "drafted"),
        entities=("the striker", "the keeper", "the captain", "the winger", "the coach",
                  "the referee"),
        comparative="faster than",
        rate_agent="the team", rate_verb="scores", rate_unit="goals",
        time_unit="game", time_units="games",
        quantity="prize", quantity_unit="points",
        recipients=("the home side", "the away side"),
    ),
}


def get_lexicon(domain: str) -> Lexicon:
    """Return the lexicon of ``domain``; raise ValueError naming the known domains."""
    if not isinstance(domain, str):
        raise TypeError(f"domain must be a string; got {domain!r} of type {type(domain).__name__}")
    try:
        return LEXICONS[domain]
    except KeyError:
        raise ValueError(
            f"no lexicon for domain {domain!r}; known domains: {', '.join(ALL_DOMAINS)}"
        ) from None


def heldout_content_words(domains: tuple[str, ...] | list[str] = HELDOUT_DOMAINS) -> dict[str, str]:
    """Map every content word of the held-out ``domains``' lexicons to its domain."""
    owner: dict[str, str] = {}
    for domain in domains:
        for word in sorted(get_lexicon(domain).content_words()):
            owner.setdefault(word, domain)
    return owner
