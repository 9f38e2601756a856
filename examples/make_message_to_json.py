"""Write examples/message-to-json/{train,valid}.jsonl: the quickstart's demonstration data.

The behaviour it teaches is one a 135M model can perform correctly, because everything it
needs is in the prompt: read a short message and reply with exactly one line of JSON
holding the sender's name, their city and the day they name,

    user:      Hi, this is Priya Shah from Leeds. Could we meet on Thursday?
    assistant: {"name": "Priya Shah", "city": "Leeds", "day": "Thursday"}

SmolLM2-135M-Instruct, asked this, answers in prose, in a Markdown code block, or with
other keys; after a few minutes of LoRA it answers in this shape and stops. The held-out
records use first names, surnames and cities that never occur in training, so a right
answer means the model copied the fields out of the message, not that it remembered
them. Messages come in many phrasings, the request sits before, after or (in a system
message) apart from the message, and some conversations go on a turn. Deterministic:
re-running writes the same files.
"""

import json
import random
from pathlib import Path

KEYS = ("name", "city", "day")
FIRST = ["Priya", "Tom", "Ana", "Lars", "Mei", "Omar", "Sofia", "Jonas", "Aisha", "Pedro",
         "Hannah", "Kenji", "Lucia", "Ivan", "Grace", "Mateo", "Nora", "Samuel", "Yara", "Felix",
         "Elena", "David", "Zara", "Oliver", "Chloe", "Ravi", "Ingrid", "Marco", "Leila", "Ben"]
LAST = ["Shah", "Baker", "Lopez", "Nilsson", "Chen", "Haddad", "Rossi", "Weber", "Okafor",
        "Silva", "Fischer", "Tanaka", "Moreno", "Petrov", "Kim", "Garcia", "Berg", "Adams",
        "Costa", "Novak", "Green", "Murphy", "Dubois", "Ali", "Schmidt", "Evans", "Larsen",
        "Romano", "Khan", "Walsh"]
CITIES = ["Leeds", "Madrid", "Oslo", "Lyon", "Porto", "Dublin", "Munich", "Boston", "Denver",
          "Seattle", "Toronto", "Vienna", "Prague", "Milan", "Krakow", "Zurich", "Glasgow",
          "Lisbon", "Athens", "Bristol", "Austin", "Chicago", "Sydney", "Auckland", "Nairobi",
          "Osaka", "Seoul", "Hamburg", "Bergen", "Valencia"]
# Never in training: held-out answers must be copied from the message.
HELD_OUT_FIRST = ["Tomasz", "Fatima", "Hugo", "Keiko", "Anders", "Bianca", "Emeka", "Rosa"]
HELD_OUT_LAST = ["Kowalski", "Mendes", "Lindqvist", "Nakamura", "Obi", "Ferreira", "Horvat",
                 "Jensen"]
HELD_OUT_CITIES = ["Cardiff", "Bilbao", "Turku", "Ghent", "Malmo", "Perth", "Quebec", "Geneva"]
DAYS = ["Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday"]

MESSAGES = [
    "Hi, this is {name} from {city}. Could we meet on {day}?",
    "{name} ({city}) would like an appointment on {day}.",
    "Message from {name}: I'll be in {city} on {day}, are you free?",
    "Can you book {name} for {day}? They're coming from {city}.",
    "On {day}, {name} arrives in {city}.",
    "Note: {day} - call {name} at the {city} office.",
    "{city} branch: {name} asked to move the meeting to {day}.",
    "Please remind me that {name} visits {city} on {day}.",
    "I'm {name}, based in {city}; {day} works best for me.",
    "{name} wrote from {city} asking whether {day} is still on.",
    "Hello! {name} here. I fly to {city} on {day}.",
    "Delivery for {name}, {city}, expected {day}.",
]
ASKS = [
    "Extract the name, city and day as JSON:\n{message}",
    "Turn this message into JSON with the keys name, city and day.\n\n{message}",
    "{message}\n\nGive me the name, city and day in JSON.",
    "JSON (name, city, day) for: {message}",
    "Read this and reply with JSON only (name, city, day): \"{message}\"",
]
SYSTEM = "Extract the sender's name, city and day from each message as one line of JSON."


def turn(rng, first, last, cities, in_system: bool):
    fields = {"name": f"{rng.choice(first)} {rng.choice(last)}", "city": rng.choice(cities),
              "day": rng.choice(DAYS)}
    message = rng.choice(MESSAGES).format(**fields)
    prompt = message if in_system else rng.choice(ASKS).format(message=message)
    return prompt, json.dumps({k: fields[k] for k in KEYS})


def record(rng, first, last, cities, multi_turn: bool = True):
    in_system = rng.random() < 0.25
    messages = [{"role": "system", "content": SYSTEM}] if in_system else []
    turns = 2 if multi_turn and rng.random() < 0.15 else 1  # some conversations go on a turn
    for _ in range(turns):
        prompt, answer = turn(rng, first, last, cities, in_system)
        messages += [{"role": "user", "content": prompt},
                     {"role": "assistant", "content": answer}]
    return {"messages": messages}


def write(path: Path, records) -> None:
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records))


def main() -> None:
    out = Path(__file__).parent / "message-to-json"
    out.mkdir(exist_ok=True)
    rng = random.Random(20261201)
    train, seen = [], set()
    while len(train) < 320:
        r = record(rng, FIRST, LAST, CITIES)
        if (key := json.dumps(r)) not in seen:  # no exact duplicates
            seen.add(key)
            train.append(r)
    # Held out: single-turn (one answer to score), unseen names and cities.
    valid = [record(rng, HELD_OUT_FIRST, HELD_OUT_LAST, HELD_OUT_CITIES, multi_turn=False)
             for _ in range(40)]
    write(out / "train.jsonl", train)
    write(out / "valid.jsonl", valid)
    print(f"wrote {len(train)} train and {len(valid)} valid records to {out}")


if __name__ == "__main__":
    main()
