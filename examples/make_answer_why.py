"""Write examples/answer-why/{train,valid}.jsonl: the demonstration dataset of the quickstart.

The behaviour it teaches is a format you can see at a glance: every reply is exactly
two lines, the answer first and then one line of reasoning,

    Answer: 56.
    Why: 7 x 8 = 56.

A small instruct model (SmolLM2-135M) answers these questions at length, or wrong, or
both; after a few minutes of LoRA it answers in this shape and stops. Every answer is
computed here (arithmetic, unit conversions, letter counts, calendar order) or taken
from a short table of facts checked by hand, so no demonstration teaches a falsehood.
Prompts are phrased many ways, some records carry a system message, and some are
multi-turn, so the model learns the format rather than one template. Deterministic:
re-running writes the same files.
"""

import json
import random
from pathlib import Path

CAPITALS = [("France", "Paris"), ("Japan", "Tokyo"), ("Italy", "Rome"), ("Spain", "Madrid"),
            ("Germany", "Berlin"), ("Canada", "Ottawa"), ("Australia", "Canberra"),
            ("Egypt", "Cairo"), ("Kenya", "Nairobi"), ("Brazil", "Brasilia"),
            ("Argentina", "Buenos Aires"), ("Mexico", "Mexico City"), ("India", "New Delhi"),
            ("China", "Beijing"), ("Russia", "Moscow"), ("Norway", "Oslo"),
            ("Sweden", "Stockholm"), ("Finland", "Helsinki"), ("Poland", "Warsaw"),
            ("Portugal", "Lisbon"), ("Greece", "Athens"), ("Turkey", "Ankara"),
            ("Peru", "Lima"), ("Chile", "Santiago"), ("Ireland", "Dublin"),
            ("Austria", "Vienna"), ("Hungary", "Budapest"), ("Thailand", "Bangkok"),
            ("Vietnam", "Hanoi"), ("South Korea", "Seoul"), ("Nigeria", "Abuja"),
            ("Morocco", "Rabat"), ("Denmark", "Copenhagen"), ("Belgium", "Brussels"),
            ("Netherlands", "Amsterdam"), ("Switzerland", "Bern"), ("Cuba", "Havana"),
            ("Colombia", "Bogota"), ("Indonesia", "Jakarta"), ("Ethiopia", "Addis Ababa")]
ELEMENTS = [("hydrogen", "H", 1), ("helium", "He", 2), ("carbon", "C", 6), ("nitrogen", "N", 7),
            ("oxygen", "O", 8), ("sodium", "Na", 11), ("magnesium", "Mg", 12),
            ("aluminium", "Al", 13), ("silicon", "Si", 14), ("sulfur", "S", 16),
            ("chlorine", "Cl", 17), ("potassium", "K", 19), ("calcium", "Ca", 20),
            ("iron", "Fe", 26), ("copper", "Cu", 29), ("zinc", "Zn", 30), ("silver", "Ag", 47),
            ("tin", "Sn", 50), ("gold", "Au", 79), ("mercury", "Hg", 80), ("lead", "Pb", 82)]
DAYS = ["Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday"]
MONTHS = ["January", "February", "March", "April", "May", "June", "July", "August",
          "September", "October", "November", "December"]
WORDS = ["banana", "elephant", "river", "keyboard", "mountain", "library", "pencil", "orange",
         "window", "galaxy", "umbrella", "teacher", "garden", "bicycle", "chocolate", "rabbit",
         "planet", "morning", "kitchen", "dolphin"]
OPPOSITES = [("hot", "cold"), ("up", "down"), ("early", "late"), ("full", "empty"),
             ("open", "closed"), ("heavy", "light"), ("wet", "dry"), ("fast", "slow"),
             ("tall", "short"), ("happy", "sad"), ("loud", "quiet"), ("inside", "outside"),
             ("begin", "end"), ("win", "lose"), ("buy", "sell"), ("push", "pull")]
UNITS = [("kilometers", "meters", 1000), ("meters", "centimeters", 100), ("hours", "minutes", 60),
         ("minutes", "seconds", 60), ("kilograms", "grams", 1000), ("liters", "milliliters", 1000),
         ("days", "hours", 24), ("weeks", "days", 7), ("dollars", "cents", 100)]
SYSTEMS = ["You are a helpful assistant.", "You are a concise assistant.",
           "Answer the user's question.", "You are a friendly tutor."]


def fmt(n: int) -> str:
    return f"{n:,}"


def capital(rng):
    country, city = rng.choice(CAPITALS)
    q = rng.choice([f"What is the capital of {country}?", f"Which city is the capital of {country}?",
                    f"capital of {country}?", f"Tell me the capital city of {country}.",
                    f"What's {country}'s capital?"])
    return q, f"Answer: {city}.\nWhy: {city} is the capital of {country}."


def arithmetic(rng):
    a, b = rng.randint(2, 99), rng.randint(2, 99)
    op = rng.choice(["+", "-", "x"])
    value = {"+": a + b, "-": a - b, "x": a * b}[op]
    word = {"+": "plus", "-": "minus", "x": "times"}[op]
    q = rng.choice([f"What is {a} {word} {b}?", f"Compute {a} {op} {b}.", f"{a} {op} {b} = ?",
                    f"Can you work out {a} {word} {b} for me?", f"How much is {a} {word} {b}?"])
    return q, f"Answer: {fmt(value)}.\nWhy: {a} {op} {b} = {fmt(value)}."


def convert(rng):
    big, small, factor = rng.choice(UNITS)
    n = rng.randint(2, 12)
    q = rng.choice([f"How many {small} are in {n} {big}?", f"Convert {n} {big} to {small}.",
                    f"{n} {big} is how many {small}?"])
    return q, (f"Answer: {fmt(n * factor)} {small}.\n"
               f"Why: 1 {big[:-1]} is {fmt(factor)} {small}, and {n} x {fmt(factor)} = {fmt(n * factor)}.")


def letters(rng):
    w = rng.choice(WORDS)
    q = rng.choice([f"How many letters are in the word '{w}'?", f"Count the letters in \"{w}\".",
                    f"How long is the word {w}, in letters?"])
    return q, f"Answer: {len(w)}.\nWhy: {'-'.join(w)} has {len(w)} letters."


def element(rng):
    name, symbol, number = rng.choice(ELEMENTS)
    if rng.random() < 0.5:
        q = rng.choice([f"What is the chemical symbol for {name}?", f"Symbol of {name}?",
                        f"Which element symbol stands for {name}?"])
        return q, f"Answer: {symbol}.\nWhy: {name.capitalize()} is element {number}, written {symbol}."
    q = rng.choice([f"What is the atomic number of {name}?", f"Atomic number of {name}?"])
    return q, f"Answer: {number}.\nWhy: {name.capitalize()} ({symbol}) has {number} protons."


def calendar(rng):
    if rng.random() < 0.5:
        i = rng.randrange(7)
        k = rng.randint(1, 3)
        after = DAYS[(i + k) % 7]
        q = (f"What day comes after {DAYS[i]}?" if k == 1 else
             f"What day is it {k} days after {DAYS[i]}?")
        return q, f"Answer: {after}.\nWhy: counting {k} day{'s' if k > 1 else ''} on from {DAYS[i]} gives {after}."
    i = rng.randrange(12)
    q = rng.choice([f"Which month comes after {MONTHS[i]}?", f"What month follows {MONTHS[i]}?",
                    f"What number is the month {MONTHS[i]}?"])
    if "number" in q:
        return q, f"Answer: {i + 1}.\nWhy: {MONTHS[i]} is month {i + 1} of 12."
    nxt = MONTHS[(i + 1) % 12]
    return q, f"Answer: {nxt}.\nWhy: {nxt} is the month right after {MONTHS[i]}."


def opposite(rng):
    a, b = rng.choice(OPPOSITES)
    if rng.random() < 0.5:
        a, b = b, a
    q = rng.choice([f"What is the opposite of '{a}'?", f"Give me the opposite of {a}.",
                    f"Antonym of {a}?"])
    return q, f"Answer: {b}.\nWhy: {a} and {b} mean opposite things."


KINDS = [capital, arithmetic, convert, letters, element, calendar, opposite]


def record(rng):
    messages = []
    if rng.random() < 0.3:
        messages.append({"role": "system", "content": rng.choice(SYSTEMS)})
    for _ in range(2 if rng.random() < 0.2 else 1):  # some conversations go on a turn
        q, a = rng.choice(KINDS)(rng)
        messages += [{"role": "user", "content": q}, {"role": "assistant", "content": a}]
    return {"messages": messages}


def write(path: Path, records) -> None:
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records))


def main() -> None:
    out = Path(__file__).parent / "answer-why"
    out.mkdir(exist_ok=True)
    rng = random.Random(20261124)
    seen, train, valid = set(), [], []
    while len(train) + len(valid) < 360:
        r = record(rng)
        key = json.dumps(r)
        if key in seen:  # no exact duplicates, and no valid record copied from train
            continue
        seen.add(key)
        (valid if len(valid) < 40 and len(seen) % 9 == 0 else train).append(r)
    write(out / "train.jsonl", train)
    write(out / "valid.jsonl", valid)
    print(f"wrote {len(train)} train and {len(valid)} valid records to {out}")


if __name__ == "__main__":
    main()
