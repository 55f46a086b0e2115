"""Seeded synthetic data: latent clusters, power-law popularity, topical catalog text.

Users and items belong to latent clusters; most of a user's events go to items of their own
cluster, drawn with Zipf-like popularity. Item titles, descriptions and categories come from
per-cluster vocabularies, so content models have real signal. The true cluster is kept in
``attributes["cluster"]`` of items and users, for tests that need a known right answer.
"""

from __future__ import annotations

import logging

import numpy as np
import pandas as pd

from recsys.datasets.base import Dataset

logger = logging.getLogger(__name__)

THEMES: dict[str, list[str]] = {
    "sports": [
        "football",
        "match",
        "goal",
        "league",
        "coach",
        "stadium",
        "team",
        "season",
        "striker",
        "trophy",
        "referee",
        "tournament",
    ],
    "cooking": [
        "recipe",
        "kitchen",
        "flavor",
        "bake",
        "chef",
        "spice",
        "dinner",
        "oven",
        "sauce",
        "dessert",
        "ingredients",
        "grill",
    ],
    "space": [
        "galaxy",
        "rocket",
        "orbit",
        "planet",
        "astronaut",
        "telescope",
        "nebula",
        "launch",
        "cosmos",
        "satellite",
        "mars",
        "comet",
    ],
    "music": [
        "guitar",
        "album",
        "melody",
        "concert",
        "band",
        "song",
        "rhythm",
        "jazz",
        "drummer",
        "chorus",
        "piano",
        "festival",
    ],
    "finance": [
        "stock",
        "market",
        "investor",
        "dividend",
        "bank",
        "portfolio",
        "interest",
        "budget",
        "trading",
        "bond",
        "savings",
        "tax",
    ],
    "gardening": [
        "garden",
        "soil",
        "flower",
        "seed",
        "compost",
        "tomato",
        "prune",
        "greenhouse",
        "bloom",
        "roses",
        "harvest",
        "shrub",
    ],
    "travel": [
        "journey",
        "beach",
        "passport",
        "hotel",
        "island",
        "flight",
        "backpack",
        "tour",
        "mountain",
        "voyage",
        "resort",
        "map",
    ],
    "computing": [
        "software",
        "code",
        "server",
        "database",
        "algorithm",
        "network",
        "laptop",
        "compiler",
        "cloud",
        "python",
        "debug",
        "kernel",
    ],
    "medicine": [
        "doctor",
        "patient",
        "hospital",
        "vaccine",
        "surgery",
        "therapy",
        "nurse",
        "clinic",
        "diagnosis",
        "medicine",
        "health",
        "virus",
    ],
    "history": [
        "empire",
        "ancient",
        "war",
        "king",
        "castle",
        "revolution",
        "medieval",
        "dynasty",
        "battle",
        "archive",
        "pharaoh",
        "treaty",
    ],
    "fashion": [
        "dress",
        "style",
        "designer",
        "runway",
        "fabric",
        "jacket",
        "model",
        "boutique",
        "silk",
        "trend",
        "shoes",
        "couture",
    ],
    "cars": [
        "engine",
        "car",
        "motor",
        "racing",
        "wheel",
        "speed",
        "driver",
        "garage",
        "turbo",
        "sedan",
        "horsepower",
        "highway",
    ],
    "pets": [
        "dog",
        "puppy",
        "cat",
        "kitten",
        "leash",
        "veterinarian",
        "paws",
        "pet",
        "breed",
        "fur",
        "treats",
        "collar",
    ],
    "art": [
        "painting",
        "canvas",
        "museum",
        "sculpture",
        "gallery",
        "portrait",
        "brush",
        "artist",
        "exhibition",
        "watercolor",
        "sketch",
        "mural",
    ],
    "science": [
        "laboratory",
        "experiment",
        "molecule",
        "physics",
        "chemistry",
        "theory",
        "research",
        "atom",
        "microscope",
        "quantum",
        "biology",
        "formula",
    ],
    "film": [
        "movie",
        "director",
        "actor",
        "cinema",
        "screenplay",
        "camera",
        "scene",
        "premiere",
        "hollywood",
        "sequel",
        "drama",
        "trailer",
    ],
}
GENERIC_WORDS = [
    "guide",
    "story",
    "collection",
    "edition",
    "review",
    "notes",
    "basics",
    "handbook",
    "stories",
    "essentials",
]
EVENT_TYPES = np.array(["view", "click", "purchase"])
EVENT_VALUES = np.array([1.0, 2.0, 4.0])
EVENT_PROBS = np.array([0.6, 0.3, 0.1])
AGE_GROUPS = np.array(["18-24", "25-34", "35-44", "45-54", "55+"])
COUNTRIES = np.array(["us", "de", "fr", "in", "br", "jp"])


def _draw_clusters(rng: np.random.Generator, n_users: int, n_items: int, n_clusters: int):
    item_cluster = rng.integers(0, n_clusters, n_items)
    user_cluster = rng.integers(0, n_clusters, n_users)
    return user_cluster, item_cluster


def synthetic_clusters(n_users: int, n_items: int, n_clusters: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """The cluster of every user (``u<n>``) and item (``i<n>``) that :func:`generate_synthetic`
    draws with these arguments: the data's known preferences (simulators click by them)."""
    return _draw_clusters(np.random.default_rng(seed), n_users, n_items, n_clusters)


def generate_synthetic(
    n_users: int = 1000,
    n_items: int = 500,
    n_events: int = 50_000,
    n_clusters: int = 8,
    in_cluster_prob: float = 0.85,
    popularity_exponent: float = 1.0,
    days: int = 180,
    seed: int = 42,
    end: str = "2026-01-01",
) -> Dataset:
    """A reproducible dataset: the same arguments give byte-identical data."""
    if min(n_users, n_items, n_events, n_clusters) < 1:
        raise ValueError("n_users, n_items, n_events and n_clusters must all be >= 1")
    rng = np.random.default_rng(seed)
    theme_names = list(THEMES)

    user_cluster, item_cluster = _draw_clusters(rng, n_users, n_items, n_clusters)
    # Power-law popularity: a random rank per item, weight rank^-exponent.
    item_weight = (rng.permutation(n_items) + 1.0) ** -popularity_exponent
    user_activity = rng.lognormal(0.0, 1.0, n_users)
    user_activity /= user_activity.sum()

    event_user = rng.choice(n_users, size=n_events, p=user_activity)
    in_cluster = rng.random(n_events) < in_cluster_prob
    event_item = np.empty(n_events, dtype=np.int64)
    global_p = item_weight / item_weight.sum()
    out_idx = np.flatnonzero(~in_cluster)
    event_item[out_idx] = rng.choice(n_items, size=len(out_idx), p=global_p)
    ev_cluster = user_cluster[event_user]
    for c in range(n_clusters):
        idx = np.flatnonzero(in_cluster & (ev_cluster == c))
        members = np.flatnonzero(item_cluster == c)
        if len(members) == 0:
            members = np.arange(n_items)
        p = item_weight[members] / item_weight[members].sum()
        event_item[idx] = members[rng.choice(len(members), size=len(idx), p=p)]

    type_idx = rng.choice(len(EVENT_TYPES), size=n_events, p=EVENT_PROBS)
    end_ts = pd.Timestamp(end, tz="UTC").value // 10**9
    seconds = np.sort(end_ts - rng.integers(0, days * 86400, n_events))
    width = len(str(n_events))
    events = pd.DataFrame(
        {
            "event_id": np.char.add("e", np.char.zfill(np.arange(n_events).astype(str), width)),
            "user_id": np.char.add("u", event_user.astype(str)),
            "item_id": np.char.add("i", event_item.astype(str)),
            "event_type": EVENT_TYPES[type_idx],
            "value": EVENT_VALUES[type_idx],
            "timestamp": pd.to_datetime(seconds, unit="s", utc=True),
        }
    )

    titles, descriptions, categories, attributes = [], [], [], []
    for j in range(n_items):
        c = int(item_cluster[j])
        theme = theme_names[c % len(theme_names)]
        vocab = THEMES[theme]
        # Clusters beyond the number of themes share a theme but get a word of their own.
        tag = f"{theme}{c // len(theme_names)}" if c >= len(theme_names) else theme
        words = rng.choice(vocab, size=3, replace=False)
        titles.append(f"{words[0].capitalize()} {words[1]} {rng.choice(GENERIC_WORDS)} #{j}")
        desc_words = list(rng.choice(vocab, size=8)) + list(rng.choice(GENERIC_WORDS, size=2))
        if tag != theme:
            desc_words.append(tag)
        descriptions.append("A " + " ".join(desc_words) + ".")
        categories.append([tag, f"{tag}/{words[2]}"])
        attributes.append({"cluster": c, "price": round(float(rng.uniform(1, 100)), 2)})
    items = pd.DataFrame(
        {
            "item_id": [f"i{j}" for j in range(n_items)],
            "title": titles,
            "description": descriptions,
            "categories": categories,
            "attributes": attributes,
            "available": True,
        }
    )
    users = pd.DataFrame(
        {
            "user_id": [f"u{u}" for u in range(n_users)],
            "attributes": [
                {"cluster": int(user_cluster[u]), "age_group": str(a), "country": str(k)}
                for u, a, k in zip(
                    range(n_users),
                    rng.choice(AGE_GROUPS, n_users),
                    rng.choice(COUNTRIES, n_users),
                )
            ],
        }
    )
    logger.info("generated %d events, %d users, %d items, %d clusters", n_events, n_users, n_items, n_clusters)
    return Dataset(events=events, items=items, users=users, name=f"synthetic-{seed}")
