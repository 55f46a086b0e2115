"""Dataset loaders: the real MovieLens 100K (when ../shared has it) and small files in each format."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest

from recsys.datasets import (
    DatasetError,
    load_dataset,
    load_goodbooks_10k,
    load_movielens_1m,
    load_movielens_100k,
    load_table,
)

ML100K = Path(__file__).resolve().parents[2] / "shared" / "datasets" / "ml-100k"


@pytest.mark.skipif(not (ML100K / "u.data").exists(), reason=f"MovieLens 100K not present at {ML100K}")
def test_movielens_100k_real_files():
    ds = load_dataset("movielens-100k", ML100K)
    assert ds.stats()["n_events"] == 100_000
    assert ds.events["user_id"].nunique() == 943 and ds.events["item_id"].nunique() == 1682
    assert len(ds.items) == 1682 and len(ds.users) == 943
    assert ds.events["event_id"].is_unique
    assert set(ds.events["value"].unique()) == {1.0, 2.0, 3.0, 4.0, 5.0}
    row = ds.events.iloc[0]
    assert (row["user_id"], row["item_id"]) == ("196", "242")
    assert row["timestamp"] == pd.Timestamp(881250949, unit="s", tz="UTC")
    toy = ds.items.set_index("item_id").loc["1"]
    assert toy["title"] == "Toy Story (1995)"
    assert toy["categories"] == ["Animation", "Children's", "Comedy"]
    assert "Comedy" in toy["description"] and "1995" in toy["description"]
    assert ds.users.set_index("user_id").loc["1", "attributes"] == {
        "age": 24,
        "gender": "M",
        "occupation": "technician",
        "zip": "85711",
    }
    assert (ds.items["categories"].map(len) > 0).all()


def test_movielens_100k_missing_folder(tmp_path):
    with pytest.raises(DatasetError, match="not found: .*nowhere"):
        load_movielens_100k(tmp_path / "nowhere")


def _write(path: Path, text: str, encoding: str = "utf-8") -> None:
    path.write_text(text, encoding=encoding)


def test_movielens_1m_small_files(tmp_path):
    _write(tmp_path / "ratings.dat", "1::1193::5::978300760\n1::661::3::978302109\n2::1193::4::978298413\n")
    _write(
        tmp_path / "movies.dat",
        "1193::One Flew Over the Cuckoo's Nest (1975)::Drama\n661::James and the Giant Peach (1996)::Animation|Children's|Musical\n"
        "5::Amélie: Le Fabuleux Destin (2001)::Comedy|Romance\n",
        encoding="latin-1",
    )
    _write(tmp_path / "users.dat", "1::F::1::10::48067\n2::M::56::16::70072\n")
    ds = load_dataset("movielens-1m", tmp_path)
    assert len(ds.events) == 3 and ds.events["value"].tolist() == [5.0, 3.0, 4.0]
    assert ds.events["timestamp"].iloc[0] == pd.Timestamp(978300760, unit="s", tz="UTC")
    items = ds.items.set_index("item_id")
    assert items.loc["661", "categories"] == ["Animation", "Children's", "Musical"]
    assert items.loc["5", "title"] == "Amélie: Le Fabuleux Destin (2001)"  # latin-1 and a colon in the title
    assert items.loc["5", "attributes"]["year"] == 2001
    users = ds.users.set_index("user_id")
    assert users.loc["1", "attributes"] == {"gender": "F", "age": 1, "occupation": "K-12 student", "zip": "48067"}


def test_movielens_1m_malformed_line(tmp_path):
    _write(tmp_path / "ratings.dat", "1::1193::5::978300760\n1::661::3\n")
    with pytest.raises(DatasetError, match="line 2"):
        load_movielens_1m(tmp_path)


def test_goodbooks_small_files(tmp_path):
    _write(tmp_path / "ratings.csv", "user_id,book_id,rating\n1,1,5\n2,1,4\n2,2,3\n3,2,1\n")
    _write(
        tmp_path / "books.csv",
        "book_id,goodreads_book_id,authors,original_publication_year,title\n"
        '1,2767052,Suzanne Collins,2008.0,The Hunger Games\n2,3,"J.K. Rowling, Mary GrandPré",1997.0,Harry Potter\n',
    )
    _write(tmp_path / "tags.csv", "tag_id,tag_name\n0,to-read\n1,fantasy\n2,young-adult\n3,dystopia\n4,magic\n")
    _write(
        tmp_path / "book_tags.csv",
        "goodreads_book_id,tag_id,count\n2767052,0,999\n2767052,3,50\n2767052,2,80\n3,1,70\n3,4,90\n3,2,10\n",
    )
    ds = load_goodbooks_10k(tmp_path, max_tags=2)
    assert len(ds.events) == 4 and ds.events["timestamp"].is_monotonic_increasing
    items = ds.items.set_index("item_id")
    assert items.loc["1", "categories"] == ["young-adult", "dystopia"]  # top by count, shelf tag dropped
    assert items.loc["2", "categories"] == ["magic", "fantasy"]
    assert items.loc["2", "attributes"]["authors"] == ["J.K. Rowling", "Mary GrandPré"]
    assert items.loc["1", "attributes"]["year"] == 2008
    assert load_dataset("goodbooks-10k", tmp_path).events["event_id"].tolist() == ds.events["event_id"].tolist()


def test_csv_with_mapping_and_items(tmp_path):
    _write(
        tmp_path / "ev.csv",
        "customer,sku,kind,amount,time\n007,A,view,1,2024-01-01T00:00:00Z\n008,B,buy,4.5,2024-01-02 10:00:00+00:00\n",
    )
    _write(tmp_path / "items.csv", "sku,title,categories,price\nA,Apple,fruit|red,1.5\nB,Banana,fruit,\n")
    ds = load_table(
        tmp_path / "ev.csv",
        "csv",
        mapping={"user_id": "customer", "item_id": "sku", "event_type": "kind", "value": "amount", "timestamp": "time"},
        items_path=tmp_path / "items.csv",
    )
    assert ds.events["user_id"].tolist() == ["007", "008"]  # ids kept as written
    assert ds.events["event_type"].tolist() == ["view", "buy"]
    assert ds.events["value"].tolist() == [1.0, 4.5]
    assert ds.events["timestamp"].iloc[1] == pd.Timestamp("2024-01-02 10:00", tz="UTC")
    items = ds.items.set_index("item_id")
    assert items.loc["A", "categories"] == ["fruit", "red"] and items.loc["A", "attributes"] == {"price": "1.5"}
    assert items.loc["B", "attributes"] == {}


def test_parquet_and_epoch_seconds(tmp_path):
    pd.DataFrame({"user_id": [1, 2], "item_id": ["x", "y"], "timestamp": [1_700_000_000, 1_700_000_060]}).to_parquet(
        tmp_path / "ev.parquet"
    )
    ds = load_dataset("parquet", tmp_path / "ev.parquet")
    assert ds.events["user_id"].tolist() == ["1", "2"]
    assert ds.events["timestamp"].iloc[1] == pd.Timestamp(1_700_000_060, unit="s", tz="UTC")


@pytest.mark.parametrize(
    ("body", "match"),
    [
        ("user_id,item_id,value\n1,a,1\n2,b,2,9\n", "line 3"),  # wrong field count
        ("user_id,item_id,value\n1,a,1\n2,b,lots\n", r"bad.csv line 3 \(data row 2\): value is not a number: 'lots'$"),
        (
            "user_id,item_id,timestamp\n1,a,2024-01-01\n2,b,yesterday\n",
            r"line 3 \(data row 2\): timestamp 'yesterday' is not a time",
        ),
        ("user_id,item_id\n1,a\n,b\n", r"line 3 \(data row 2\): user_id must not be empty or blank"),
        ("user,item_id\n1,a\n", r"missing required column\(s\): user_id"),
        ("user_id,item_id\n", "no events"),
        # ids follow recsys.validation: length, '/', control characters
        (
            "user_id,item_id\n1,a\n2," + "x" * 100_000 + "\n",
            r"line 3 \(data row 2\): item_id is 100,000 characters long \(at most 255\)$",
        ),
        ("user_id,item_id\n1,a/b\n", r"line 2 \(data row 1\): item_id contains '/'"),
        ('user_id,item_id\n1,"a\tb"\n', r"line 2 \(data row 1\): item_id contains a control character \(U\+0009\)"),
        (
            "user_id,item_id,event_type\n1,a,view\n2,b, \n",
            r"line 3 \(data row 2\): event_type must not be empty or blank",
        ),
        ("user_id,item_id,value\n1,a,1\n2,b,inf\n", r"line 3 \(data row 2\): value is not a finite number"),
    ],
)
def test_malformed_csv(tmp_path, body, match):
    _write(tmp_path / "bad.csv", body)
    with pytest.raises(DatasetError, match=match):
        load_dataset("csv", tmp_path / "bad.csv")


def test_bad_timestamp_reported_at_its_file_line_with_its_own_value(tmp_path):
    # epoch seconds with one bad value among them; a blank line and a quoted field spanning two
    # lines before it: pandas' row position alone would name the wrong line.
    _write(
        tmp_path / "ev.csv",
        'user_id,item_id,note,timestamp\nu1,i1,x,1700000000\n\nu2,i2,"two\nlines",1700000060\n'
        "u3,i3,y,1700000120\nu4,i4,z,notatime\nu5,i5,w,1700000180\n",
    )
    with pytest.raises(DatasetError, match=r"ev.csv line 7 \(data row 4\): timestamp 'notatime' is not a time"):
        load_dataset("csv", tmp_path / "ev.csv")


def test_epoch_seconds_out_of_range_is_not_a_time(tmp_path):
    _write(tmp_path / "ev.csv", "user_id,item_id,timestamp\nu1,i1,1700000000\nu2,i2,1700000000000000\n")
    with pytest.raises(DatasetError, match=r"line 3 \(data row 2\): timestamp '1700000000000000' is not a time"):
        load_dataset("csv", tmp_path / "ev.csv")


@pytest.mark.parametrize(
    ("timestamps", "match"),
    [
        (["2024-01-01", "2024-01-02", "bad", "2024-01-04"], "data row 3: timestamp 'bad' is not a time"),
        ([1.7e9, float("nan"), 1.7e9], r"data row 2: timestamp \(empty\) is not a time"),
        ([1.7e9, 1.7e9, 1e20], r"data row 3: timestamp 1e\+20 is not a time"),
    ],
)
def test_parquet_bad_timestamp_names_data_row_and_value(tmp_path, timestamps, match):
    n = len(timestamps)
    pd.DataFrame({"user_id": [f"u{i}" for i in range(n)], "item_id": ["x"] * n, "timestamp": timestamps}).to_parquet(
        tmp_path / "ev.parquet"
    )
    with pytest.raises(DatasetError, match=match):
        load_dataset("parquet", tmp_path / "ev.parquet")


def test_parquet_bad_id_names_data_row_and_column(tmp_path):
    pd.DataFrame({"customer": ["ok", "a\x00b"], "item_id": ["x", "y"]}).to_parquet(tmp_path / "ev.parquet")
    with pytest.raises(
        DatasetError,
        match=r"ev.parquet data row 2: user_id \(column 'customer'\) contains a control character \(U\+0000\)",
    ):
        load_table(tmp_path / "ev.parquet", "parquet", mapping={"user_id": "customer"})


def test_bad_item_in_items_file_names_that_file(tmp_path):
    _write(tmp_path / "ev.csv", "user_id,item_id\n1,a\n")
    _write(tmp_path / "items.csv", "item_id,title,categories\na,Apple,fruit\nb,Banana,fruit|\x01bad\n")
    with pytest.raises(
        DatasetError, match=r"items.csv line 3 \(data row 2\): categories label contains a control character"
    ):
        load_table(tmp_path / "ev.csv", "csv", items_path=tmp_path / "items.csv")


def test_mixed_epoch_seconds_and_dates_are_accepted(tmp_path):
    _write(tmp_path / "ev.csv", "user_id,item_id,timestamp\nu1,i1,1700000000\nu2,i2,2024-01-02T00:00:00Z\n")
    ds = load_dataset("csv", tmp_path / "ev.csv")
    assert ds.events["timestamp"].tolist() == [
        pd.Timestamp(1_700_000_000, unit="s", tz="UTC"),
        pd.Timestamp("2024-01-02", tz="UTC"),
    ]


def test_directory_instead_of_file_and_file_instead_of_folder(tmp_path):
    with pytest.raises(DatasetError, match="is a directory"):
        load_dataset("csv", tmp_path)
    _write(tmp_path / "ev.csv", "user_id,item_id\n1,a\n")
    with pytest.raises(DatasetError, match="is a file: give the unpacked folder"):
        load_dataset("movielens-100k", tmp_path / "ev.csv")


def test_dataset_normalization_refuses_bad_ids_for_every_source():
    from recsys.datasets.base import Dataset

    with pytest.raises(DatasetError, match=r"event row 1: user_id contains a lone surrogate") as info:
        Dataset(events=pd.DataFrame({"user_id": pd.Series(["ok", "bad\ud800"], dtype=object), "item_id": ["a", "b"]}))
    assert (info.value.table, info.value.row, info.value.column) == ("events", 1, "user_id")
    with pytest.raises(DatasetError, match=r"user row 0: attributes \['score'\] is not a finite number"):
        Dataset(
            events=pd.DataFrame({"user_id": ["u"], "item_id": ["a"]}),
            users=pd.DataFrame({"user_id": ["u"], "attributes": [{"score": float("nan")}]}),
        )


def test_unknown_format_and_missing_file(tmp_path):
    with pytest.raises(DatasetError, match="known formats: movielens-100k, movielens-1m, goodbooks-10k, csv, parquet"):
        load_dataset("excel", tmp_path)
    with pytest.raises(DatasetError, match="not found"):
        load_dataset("csv", tmp_path / "missing.csv")
    with pytest.raises(DatasetError, match="not found"):
        load_goodbooks_10k(tmp_path)
