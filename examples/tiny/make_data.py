"""Write the tiny English training data of the example: ``python examples/tiny/make_data.py [OUT_DIR]``.

Simple English sentences about a small, consistent toy world (every object has one colour, every person
one routine, every animal one place), so that stage 2 has something learnable to retrieve. English only:
LUSIFER trains on English data and is evaluated on other languages.

Writes ``stage1.jsonl`` (``{"text"}`` and ``{"query", "answer", "instruction"}`` records) and
``stage2.jsonl`` (``{"query", "positive", "negatives", "instruction"}`` records). The committed files were
made by this script with its defaults.
"""

from __future__ import annotations

import json
import random
import sys
from pathlib import Path

OBJECTS = {
    "apple": "red", "banana": "yellow", "sky": "blue", "grass": "green", "snow": "white", "coal": "black",
    "orange": "orange", "cherry": "red", "lemon": "yellow", "sea": "blue", "leaf": "green", "milk": "white",
    "crow": "black", "carrot": "orange", "plum": "purple", "cloud": "grey", "strawberry": "red", "chick": "yellow",
    "frog": "green", "night": "black",
}
PEOPLE = {
    "Anna": "walks to school every morning", "Ben": "reads a book every evening",
    "Clara": "cooks soup on Sundays", "David": "plays football after lunch",
    "Emma": "waters the flowers every day", "Frank": "drives a bus in the city",
    "Grace": "sings in a choir on Fridays", "Henry": "fixes old bicycles in his shop",
    "Irene": "teaches music at the school", "Jack": "feeds the ducks at the pond",
    "Kate": "paints pictures of the sea", "Leo": "bakes bread early in the morning",
    "Mia": "swims in the lake in summer", "Noah": "builds small boats from wood",
    "Olivia": "writes letters to her grandmother", "Peter": "walks his dog in the park",
}
ANIMALS = {
    "dog": "in the garden", "cat": "on the warm windowsill", "horse": "in the stable", "cow": "in the field",
    "fish": "in the pond", "bird": "in the tall tree", "owl": "in the old barn", "rabbit": "under the hedge",
    "duck": "by the river", "bee": "in the hive", "fox": "in the dark forest", "sheep": "on the green hill",
}
NUMBERS = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten", "eleven",
           "twelve", "thirteen", "fourteen", "fifteen", "sixteen", "seventeen", "eighteen"]
WEATHER = ["sunny", "rainy", "windy", "cold", "warm", "cloudy", "foggy", "snowy"]
PLACES = ["the city", "the village", "the mountains", "the valley", "the town", "the harbour", "the farm"]
DAYS = ["Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday"]

QA_INSTRUCTION = "Answer the question"
RETRIEVE = "Given a question, find the sentence that answers it"
PARAPHRASE = "Find a sentence with the same meaning"


def colour(obj: str) -> str:
    return f"The {obj} is {OBJECTS[obj]}."


def routine(name: str) -> str:
    return f"{name} {PEOPLE[name]}."


def animal(name: str) -> str:
    return f"The {name} sleeps {ANIMALS[name]}."


def addition(a: int, b: int) -> str:
    return f"{NUMBERS[a].capitalize()} plus {NUMBERS[b]} is {NUMBERS[a + b]}."


def stage1_records(rng: random.Random) -> list[dict]:
    texts = [colour(o) for o in OBJECTS] + [routine(p) for p in PEOPLE] + [animal(a) for a in ANIMALS]
    texts += [addition(a, b) for a in range(1, 10) for b in range(1, 10) if (a + b) % 2 == 0]
    for _ in range(80):
        texts.append(f"On {rng.choice(DAYS)} it was {rng.choice(WEATHER)} in {rng.choice(PLACES)}, "
                     f"and {rng.choice(list(PEOPLE))} stayed at home.")
    for _ in range(40):
        a, b = rng.sample(list(PEOPLE), 2)
        texts.append(f"{routine(a)} {routine(b)}")
    records: list[dict] = [{"text": t} for t in texts]
    for obj in OBJECTS:
        records.append({"query": f"What colour is the {obj}?", "answer": colour(obj), "instruction": QA_INSTRUCTION})
    for name in PEOPLE:
        records.append({"query": f"What does {name} do?", "answer": routine(name), "instruction": QA_INSTRUCTION})
    for name in ANIMALS:
        records.append({"query": f"Where does the {name} sleep?", "answer": animal(name)})
    for a in range(1, 10):
        b = rng.randint(1, 9)
        records.append({"query": f"What is {NUMBERS[a]} plus {NUMBERS[b]}?", "answer": addition(a, b),
                        "instruction": QA_INSTRUCTION})
    rng.shuffle(records)
    return records


def stage2_records(rng: random.Random) -> list[dict]:
    records = []
    objects, people, animals = list(OBJECTS), list(PEOPLE), list(ANIMALS)
    for obj in objects:
        others = [o for o in objects if o != obj]
        records.append({"query": f"What colour is the {obj}?", "positive": colour(obj),
                        "negatives": [colour(o) for o in rng.sample(others, 3)], "instruction": RETRIEVE})
    for name in people:
        others = [p for p in people if p != name]
        records.append({"query": f"What does {name} do?", "positive": routine(name),
                        "negatives": [routine(p) for p in rng.sample(others, 3)], "instruction": RETRIEVE})
        records.append({"query": f"Who {PEOPLE[name]}?", "positive": routine(name),
                        "negatives": [routine(p) for p in rng.sample(others, 2)], "instruction": RETRIEVE})
    for name in animals:
        others = [a for a in animals if a != name]
        records.append({"query": f"Where does the {name} sleep?", "positive": animal(name),
                        "negatives": [animal(a) for a in rng.sample(others, 3)], "instruction": RETRIEVE})
        records.append({"query": f"A {name} is sleeping {ANIMALS[name]}.", "positive": animal(name),
                        "negatives": [animal(rng.choice(others))], "instruction": PARAPHRASE})
    for a in range(1, 10):
        for b in range(1, 10):
            if (a * 7 + b) % 3:
                continue
            wrong = [addition(x, y) for x, y in ((a, (b % 9) + 1), ((a % 9) + 1, b)) if x + y < len(NUMBERS)]
            records.append({"query": f"What is {NUMBERS[a]} plus {NUMBERS[b]}?", "positive": addition(a, b),
                            "negatives": wrong, "instruction": RETRIEVE})
    for obj in objects:
        records.append({"query": f"The colour of the {obj} is {OBJECTS[obj]}.", "positive": colour(obj),
                        "instruction": PARAPHRASE})
    rng.shuffle(records)
    return records


def write_jsonl(path: Path, records: list[dict]) -> None:
    with open(path, "w", encoding="utf-8") as fh:
        for record in records:
            fh.write(json.dumps(record, ensure_ascii=True) + "\n")


def main(out_dir: str | None = None) -> None:
    out = Path(out_dir) if out_dir else Path(__file__).resolve().parent
    out.mkdir(parents=True, exist_ok=True)
    write_jsonl(out / "stage1.jsonl", stage1_records(random.Random(1)))
    write_jsonl(out / "stage2.jsonl", stage2_records(random.Random(2)))


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else None)
