"""The universe: people and towns with attributes and relations, generated from a seed.

Every fact of the world lives here; the corpus, the prompts, the eval suites and the gold
judges' records are all rendered from it, so they always agree with each other.
"""

from __future__ import annotations

import random
from dataclasses import asdict, dataclass, field

from llamaforge.world import lexicon
from llamaforge.world.language import ENGLISH_VOCAB, VELTAN_VOCAB


@dataclass(frozen=True)
class Person:
    name: str
    pronoun: str  # "he", "she" or "they"
    town: str
    job: str
    animal: str
    pet: str
    color: str
    food: str
    hobby: str
    age: int
    friend: str


@dataclass(frozen=True)
class Town:
    name: str
    river: str
    product: str
    mayor: str
    day: str


@dataclass
class Universe:
    people: list[Person]
    towns: list[Town]
    _people: dict[str, Person] = field(init=False, repr=False, compare=False)
    _towns: dict[str, Town] = field(init=False, repr=False, compare=False)
    _residents: dict[str, list[str]] = field(init=False, repr=False, compare=False)

    def __post_init__(self):
        # Name indexes: the corpus looks people and towns up hundreds of thousands of times.
        self._people = {p.name: p for p in self.people}
        self._towns = {t.name: t for t in self.towns}
        self._residents = {t.name: [p.name for p in self.people if p.town == t.name] for t in self.towns}

    def person(self, name: str) -> Person:
        if name not in self._people:
            raise KeyError(f"no person named {name!r} in this world")
        return self._people[name]

    def town(self, name: str) -> Town:
        if name not in self._towns:
            raise KeyError(f"no town named {name!r} in this world")
        return self._towns[name]

    def residents(self, town: str) -> list[str]:
        """The people living in a town, in the universe's order."""
        return self._residents[town]

    def pools(self) -> dict[str, list[str]]:
        """Every possible answer of each kind, in a fixed order (distractors come from here)."""
        return {
            "people": [p.name for p in self.people],
            "towns": [t.name for t in self.towns],
            "rivers": [t.river for t in self.towns],
            "pet_names": [p.pet for p in self.people],
            "jobs": list(lexicon.JOBS),
            "animals": list(lexicon.ANIMALS),
            "colors": list(lexicon.COLORS),
            "foods": list(lexicon.FOODS),
            "hobbies": list(lexicon.HOBBIES),
            "products": list(lexicon.PRODUCTS),
            "days": list(lexicon.WEEKDAYS),
            "objects": list(lexicon.OBJECTS),
            "counts": list(lexicon.COUNTS),
            "ages": [],  # numbers: judged by "no other number", not by a list
        }

    def names(self) -> frozenset[str]:
        """All proper names (people, pets, towns, rivers)."""
        out = [p.name for p in self.people] + [p.pet for p in self.people]
        out += [t.name for t in self.towns] + [t.river for t in self.towns]
        return frozenset(out)

    def to_dict(self) -> dict:
        return {"people": [asdict(p) for p in self.people], "towns": [asdict(t) for t in self.towns]}

    @classmethod
    def from_dict(cls, data: dict) -> "Universe":
        return cls([Person(**p) for p in data["people"]], [Town(**t) for t in data["towns"]])


def _syllable(rng: random.Random) -> str:
    return rng.choice(lexicon.NAME_ONSETS) + rng.choice(lexicon.NAME_VOWELS)


def _fresh_name(rng: random.Random, used: set[str], make) -> str:
    """Draw names until one is new and is not a word of either language (so translating a
    sentence never changes a name and the language detector never counts one)."""
    for _ in range(10_000):
        name = make(rng)
        lower = name.lower()
        if lower not in used and lower not in ENGLISH_VOCAB and lower not in VELTAN_VOCAB:
            used.add(lower)
            return name
    raise RuntimeError("ran out of distinct names: the syllable inventory in lexicon.py is too small for this size")


def _person_name(rng: random.Random) -> str:
    return (_syllable(rng) + _syllable(rng) + rng.choice(lexicon.NAME_CODAS)).capitalize()


def _pet_name(rng: random.Random) -> str:
    # Mostly short (Pip, Tux); a second syllable now and then keeps large worlds supplied.
    stem = _syllable(rng) + (_syllable(rng) if rng.random() < 0.3 else "")
    return (stem + rng.choice(("n", "l", "r", "p", "x"))).capitalize()


def _town_name(rng: random.Random) -> str:
    return (_syllable(rng) + rng.choice(("l", "r", "n", "s", "")) + rng.choice(lexicon.TOWN_SUFFIXES)).capitalize()


def _river_name(rng: random.Random) -> str:
    return (_syllable(rng) + _syllable(rng) + "a").capitalize()


def generate_universe(rng: random.Random, n_people: int, n_towns: int) -> Universe:
    """People and towns with attributes; best friends are mutual pairs, every town has at
    least one resident and its mayor lives there."""
    if n_towns < 2 or n_people < 2 * n_towns:
        raise ValueError(f"a world needs at least 2 towns and 2 people per town; got {n_people} people, {n_towns} towns")
    n_people += n_people % 2  # best friends come in pairs
    used: set[str] = set()
    town_names = [_fresh_name(rng, used, _town_name) for _ in range(n_towns)]
    rivers = [_fresh_name(rng, used, _river_name) for _ in range(n_towns)]
    names = [_fresh_name(rng, used, _person_name) for _ in range(n_people)]
    pets = [_fresh_name(rng, used, _pet_name) for _ in range(n_people)]

    homes = [town_names[i % n_towns] for i in range(n_people)]
    rng.shuffle(homes)
    order = list(range(n_people))
    rng.shuffle(order)
    friend = {}
    for a, b in zip(order[0::2], order[1::2]):
        friend[a], friend[b] = b, a

    people = []
    for i, name in enumerate(names):
        people.append(Person(
            name=name,
            pronoun=rng.choices(("he", "she", "they"), weights=(45, 45, 10))[0],
            town=homes[i],
            job=rng.choice(lexicon.JOBS),
            animal=rng.choice(lexicon.ANIMALS),
            pet=pets[i],
            color=rng.choice(lexicon.COLORS),
            food=rng.choice(lexicon.FOODS),
            hobby=rng.choice(lexicon.HOBBIES),
            age=rng.randint(18, 85),
            friend=names[friend[i]],
        ))
    towns = []
    for name, river in zip(town_names, rivers):
        residents = [p.name for p in people if p.town == name]
        towns.append(Town(name=name, river=river, product=rng.choice(lexicon.PRODUCTS),
                          mayor=rng.choice(residents), day=rng.choice(lexicon.WEEKDAYS)))
    return Universe(people, towns)


def article(word: str) -> str:
    return ("an " if word[0] in "aeiou" else "a ") + word


def person_fields(p: Person, u: Universe) -> dict[str, str]:
    """The template fields of one person (and of their town)."""
    town = u.town(p.town)
    pron = lexicon.PRONOUNS[p.pronoun]
    return {
        "name": p.name, "town": p.town, "job": p.job, "a_job": article(p.job), "Job": p.job.capitalize(),
        "animal": p.animal, "a_animal": article(p.animal), "Animal": p.animal.capitalize(), "pet": p.pet,
        "color": p.color, "food": p.food, "hobby": p.hobby, "age": str(p.age), "friend": p.friend,
        "subj": pron["subj"], "Subj": pron["subj"].capitalize(), "obj": pron["obj"], "poss": pron["poss"],
        "river": town.river, "product": town.product, "day": town.day, "mayor": town.mayor,
    }


def town_fields(t: Town) -> dict[str, str]:
    return {"town": t.name, "river": t.river, "product": t.product, "mayor": t.mayor, "day": t.day}
