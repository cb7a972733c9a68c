"""Write examples/corpus/multilingual.parquet from the package's multilingual sample sentences."""

from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from lusifer.tiny import sample_texts

texts = sample_texts()
table = pa.table({"id": list(range(len(texts))), "text": texts})
out = Path(__file__).with_name("multilingual.parquet")
pq.write_table(table, out)
print(out, table.num_rows)
