"""Helpers shared by the tests of the instruction formats."""


def llava_record(value0: str = "<image>\nWhat is here?", **extra: object) -> dict:
    record = {
        "id": "r1",
        "image": "images/a.jpg",
        "conversations": [
            {"from": "human", "value": value0},
            {"from": "gpt", "value": "A cat."},
        ],
    }
    return record | extra
