"""Converters between internal conversations and the LLaVA and paper-release instruction formats.

Internal form: rows of ``generated__conversations`` whose ``turns`` alternate human/gpt, starting
with human. Imports validate every record; a malformed record becomes a ``raw__rejects`` row that
names the file, the record and the field, and the rest of the file still imports.

Choices that callers rely on:

- An imported record that carries no instruction type (plain LLaVA data) gets
  ``instruction_type = "unlabelled"``: the type is not guessed from the text.
- An imported row keeps the record's own identifier in ``source_annotation_ids``
  (``"llava_id:<id>"`` or ``"paper_img_ids:<img_ids>"``) so that re-export writes it back
  unchanged; rows the pipeline generated export their ``conversation_id`` (LLaVA) or the digits
  of the image file name (paper ``img_ids``).
- ``to_llava`` writes an extra ``instruction_type`` key (LLaVA's loader ignores unknown keys), so
  a LLaVA round trip keeps the type.

Modules: ``records.py`` (what every import shares: limits, errors, record checks, the row
collector), ``llava.py`` and ``paper.py`` (records of each format read in), ``files.py`` (an
instruction file on disk read whole: format detection, streaming, JSON Lines, Parquet),
``writers.py`` (conversations written out in both formats) and ``encoding.py`` (byte-level text
checks, shared with the COCO reader).
"""
