"""Batch scoring on Apache Spark: the registered pyfunc model through ``mlflow.pyfunc.spark_udf``.

``score`` is the library function for anyone who holds a SparkSession (a cluster, ``spark-submit``,
a notebook); ``predict --engine spark`` reads a file with Spark, checks it as the local engine
does, scores it with ``score`` and writes a Parquet folder. The model runs in Spark's Python
workers in the driver's environment (``env_manager="local"``), so those workers must be able to
import emotion-exp's requirements; ``PYSPARK_PYTHON`` is set to this interpreter for that.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import shutil
import sys
import tempfile
import threading
import uuid
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import mlflow
import pandas as pd

from emotion_exp import console, data, engine, pyfunc, registry, texts
from emotion_exp.errors import UserError

if TYPE_CHECKING:
    from pyspark import SparkConf
    from pyspark.sql import Column, DataFrame, SparkSession

INSTALL_HINT = (
    "--engine spark needs pyspark and a Java 17 runtime: pip install 'emotion-exp[spark]' "
    "(or pip install pyspark), and apt-get install openjdk-17-jre-headless where `java` is missing."
)
# Holds the model's output struct while its fields become columns; no input column is called this.
_PREDICTION = "__emotion_exp_prediction"
# Python's `not text.strip()`: Java's \s with (?U) matches Unicode white space too.
_BLANK = r"(?U)^\s*$"
# `texts.blank`: white space and the marks that show nothing on their own.
_BLANK_TEXT = rf"(?U)^[\s{texts.INVISIBLE}]*$"
# Spark reads an empty CSV field as null unless told another text means null (and a last empty
# field as null all the same: filled in after reading); the local engine (Python's csv module)
# reads it as an empty text, which --skip_empty may skip.
_NO_NULL = "\x00emotion-exp: no text is read as null\x00"
ROWS_PER_TASK = 1_000
"""Rows a scoring task takes (so progress moves in steps of about that many texts)."""
TASKS_PER_CORE = 16
"""At most this many tasks per core: each task costs Spark a few milliseconds of scheduling."""
POLL_S = 0.5
# A surrogate code unit outside a pair (JSON's "\ud800"): Java matches a valid pair as one code point.
_LONE_SURROGATE = r"\p{Cs}"


@contextlib.contextmanager
def session(master: str = "local[*]") -> Iterator[SparkSession]:
    """The active SparkSession, or a new one on ``master`` that is stopped on exit.

    Python workers run this interpreter (``PYSPARK_PYTHON``), so they import the packages this
    process sees; a local master binds to 127.0.0.1 (``SPARK_LOCAL_IP``) instead of the
    machine's external address. Spark starts through ``SparkSession.builder`` alone, so its JVM
    prints ``WARNING: Using incubator modules: jdk.incubator.vector`` to stderr: no JVM option
    silences it, and filtering it would take PySpark's private gateway (docs/scaling.md).
    """
    try:
        from pyspark.sql import SparkSession
    except ImportError as error:
        raise UserError(INSTALL_HINT) from error
    active = SparkSession.getActiveSession()
    if active is not None:
        yield active
        return
    os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
    if master.startswith("local"):
        os.environ.setdefault("SPARK_LOCAL_IP", "127.0.0.1")
    if shutil.which("java") is None and not os.environ.get("JAVA_HOME"):
        raise UserError(f"No Java runtime found (no `java` on PATH, no JAVA_HOME). {INSTALL_HINT}")
    from pyspark import SparkConf

    conf = SparkConf().setMaster(master).setAppName("emotion-exp predict")
    if master.startswith("local"):
        # A batch predict on this machine needs no web UI; without it, jobs started at once never
        # contend for port 4040 (Spark's "could not bind" warning) nor serve a page on it.
        conf.set("spark.ui.enabled", "false")
    with contextlib.ExitStack() as quiet:
        if not console.verbose():
            conf = _quiet(conf, quiet.enter_context(tempfile.TemporaryDirectory(prefix="emotion-exp-spark-")))
            quiet.enter_context(warnings.catch_warnings())
            warnings.filterwarnings(
                "ignore", message="PySpark does not yet fully support pandas", category=FutureWarning
            )
        spark = SparkSession.builder.config(conf=conf).getOrCreate()
        try:
            yield spark
        finally:
            spark.stop()


# Spark's own log as a user of predict --engine spark needs it (--verbose keeps Spark's default): warnings and
# errors, less Hadoop's notice that its native library is missing. The root level is the one Spark gives a shell,
# so it does not print that it set it.
_LOG4J2 = """\
rootLogger.level = warn
rootLogger.appenderRef.stderr.ref = stderr
appender.console.type = Console
appender.console.name = stderr
appender.console.target = SYSTEM_ERR
appender.console.layout.type = PatternLayout
appender.console.layout.pattern = %d{yy/MM/dd HH:mm:ss} %p %c{1}: %m%n%ex
logger.native.name = org.apache.hadoop.util.NativeCodeLoader
logger.native.level = error
"""


def _not_env_manager_advice(record: logging.LogRecord) -> bool:
    return not str(record.msg).startswith("Calling `spark_udf()` with `env_manager=")


def _quiet(conf: SparkConf, folder: str) -> SparkConf:
    """``conf`` with Spark's startup lines, INFO/WARN log and ``[Stage 7:> (0 + 2) / 2]`` bars turned off.

    Without a log4j2 configuration Spark prints which default it uses and how to change its
    level, and warns that Hadoop's native library is missing; its console progress bars show
    tasks, not texts. MLflow's advice that ``env_manager="local"`` does not rebuild the model's
    environment is dropped: the workers run this interpreter on purpose (see the module's docstring).
    """
    configuration = Path(folder) / "log4j2.properties"
    configuration.write_text(_LOG4J2)
    logging.getLogger("mlflow.pyfunc").addFilter(_not_env_manager_advice)
    return conf.set("spark.driver.extraJavaOptions", f"-Dlog4j2.configurationFile={configuration.as_uri()}").set(
        "spark.ui.showConsoleProgress", "false"
    )


def read_texts(spark: SparkSession, path: str | Path, text_column: str = "text", skip_empty: bool = False) -> DataFrame:
    """Read a file of texts with Spark and check it as ``data.read_texts`` does, with the same messages."""
    return read_counted_texts(spark, path, text_column, skip_empty)[0]


def read_counted_texts(
    spark: SparkSession, path: str | Path, text_column: str = "text", skip_empty: bool = False
) -> tuple[DataFrame, int]:
    """``read_texts``' frame and its number of rows (counted by the check, for the progress of scoring).

    Parquet (a file or a folder of part files), CSV, TSV, JSON Lines or plain text (one text a
    line, blank lines skipped, column ``text``). Texts follow ``emotion_exp.texts``: empty ones are
    refused unless ``skip_empty``; a refused file gets the local engine's message, naming its lines.
    The frame is spread in file order over ``defaultParallelism`` partitions or more, about
    ``ROWS_PER_TASK`` rows each (up to ``TASKS_PER_CORE`` per core): a file smaller than a Spark
    split still keeps every core busy, and scoring reports its progress task by task.
    """
    path = Path(path).expanduser()
    if not path.exists():
        raise UserError(
            f"Input '{path}' does not exist; expected a Parquet file or folder of Parquet files, or a CSV, TSV, "
            "JSON Lines or .txt (one text a line) file."
        )
    suffix = "" if path.is_dir() else path.suffix.lower()
    if suffix and suffix not in data.SUFFIXES:
        raise UserError(
            f"'{path}' has the unsupported extension {suffix!r}; supported: {', '.join(data.SUFFIXES)}, "
            "or a folder of Parquet files."
        )
    if path.is_file() and path.stat().st_size == 0:
        raise data.empty_file_error(path)
    if suffix in ("", ".parquet"):
        _check_parquet_footers(path)
    frame = _read(spark, path, suffix)
    column = "text" if suffix == ".txt" else text_column
    data.check_columns(pd.DataFrame(columns=frame.columns), str(path), {column: "--text_column"})
    if suffix in (".jsonl", ".json") and _json_values_not_strings(spark, path, column):
        data.read_texts(path, column, skip_empty=skip_empty)  # raises the local engine's error, naming the lines
    rows = check_texts(frame, column, path, skip_empty)
    cores = spark.sparkContext.defaultParallelism
    return _spread(frame, max(cores, min(math.ceil(rows / ROWS_PER_TASK), cores * TASKS_PER_CORE))), rows


def _read(spark: SparkSession, path: Path, suffix: str) -> DataFrame:
    from pyspark.sql import functions as F

    location = str(path)
    if suffix in ("", ".parquet"):
        return spark.read.parquet(location)
    if suffix == ".csv":
        # Every column as text, as the local engine reads it (no type inference).
        # multiLine: a quoted text may hold line breaks, as Python's csv module reads it.
        frame = spark.read.csv(
            location, header=True, encoding="UTF-8", multiLine=True, nullValue=_NO_NULL, emptyValue=""
        )
        return frame.na.fill("")
    if suffix == ".tsv":
        # The local engine reads TSV without quote processing; an empty quote character turns it off.
        frame = spark.read.csv(
            location, header=True, sep="\t", quote="", encoding="UTF-8", nullValue=_NO_NULL, emptyValue=""
        )
        return frame.na.fill("")
    if suffix in (".jsonl", ".json"):
        frame = spark.read.json(location, mode="PERMISSIVE", columnNameOfCorruptRecord="_corrupt_record")
        if "_corrupt_record" in frame.columns:
            parsed = [c for c in frame.columns if c != "_corrupt_record"]
            # Spark refuses a query of the corrupt-record column alone: count a parsed column beside it.
            malformed = (
                frame.agg(F.count("_corrupt_record"), F.count(F.col(f"`{parsed[0]}`"))).first()[0] if parsed else -1
            )
            if malformed:
                what = "no line is" if malformed < 0 else f"{malformed} line(s) are not"
                raise UserError(
                    f"Could not parse '{path}': {what} a JSON object; expected JSON Lines, one object per line."
                )
            frame = frame.drop("_corrupt_record")
        # Spark sorts the keys it infers; the local engine keeps the file's order (here: the first object's).
        first = _first_object_keys(path)
        return frame.select(
            *[f"`{c}`" for c in first if c in frame.columns], *[f"`{c}`" for c in frame.columns if c not in first]
        )
    lines = spark.read.text(location)
    return lines.filter(~F.col("value").rlike(_BLANK)).withColumnRenamed("value", "text")


def _check_parquet_footers(path: Path) -> None:
    """Refuse a Parquet file, or a folder's part, that is not Parquet, in one sentence naming it.

    Spark reads the parts only when a job runs, and a corrupt one ends it in hundreds of lines
    of JVM traceback; each footer read here costs a few kilobytes.
    """
    import pyarrow.parquet as pq

    parts = [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file() and _is_data_file(p))
    for part in parts:
        try:
            pq.ParquetFile(part).metadata  # noqa: B018 (reading the footer is the check)
        except (OSError, ValueError) as error:  # pyarrow's ArrowInvalid is a ValueError
            raise UserError(
                f"'{part}' is not a readable Parquet file ({str(error).splitlines()[0]}); replace or remove it"
                + (f" from the folder '{path}'" if part != path else "")
                + "."
            ) from error


def _is_data_file(part: Path) -> bool:
    """A file Spark reads as data: not hidden (``.crc`` checksums) and not a marker such as ``_SUCCESS``."""
    return not part.name.startswith((".", "_"))


def _json_values_not_strings(spark: SparkSession, path: Path, column: str) -> int:
    """Lines of a JSON Lines file whose ``column`` holds a number, boolean, list or object.

    Spark's JSON reader turns such values into text (5 becomes "5") in a column that also holds
    strings, where the local engine refuses them: counted from the raw JSON as VARIANT values.
    """
    from pyspark.sql import functions as F

    quote = '"' if "'" in column else "'"
    value = F.try_variant_get(F.try_parse_json(F.col("value")), f"$[{quote}{column}{quote}]", "variant")
    kind = F.schema_of_variant(value)
    return spark.read.text(str(path)).filter(kind.isNotNull() & ~kind.isin("STRING", "VOID")).count()


def _first_object_keys(path: Path) -> list[str]:
    """The keys of the first JSON object in a JSON Lines file, in their order."""
    with path.open(encoding="utf-8-sig") as lines:
        for line in lines:
            if line.strip():
                record = json.loads(line)
                return list(record) if isinstance(record, dict) else []
    return []


def _refused_text(frame: DataFrame, column: str, skip_empty: bool) -> Column:
    """True where ``emotion_exp.texts`` refuses a text: null or not a string, a lone surrogate, longer than
    ``texts.DEFAULT_MAX_CHARS``, empty unless skipped."""
    from pyspark.sql import functions as F
    from pyspark.sql.types import StringType

    value = F.col(f"`{column}`")
    if not isinstance(frame.schema[column].dataType, StringType):
        return F.lit(True)
    refused = value.isNull() | value.rlike(_LONE_SURROGATE) | (F.length(value) > texts.DEFAULT_MAX_CHARS)
    return refused if skip_empty else refused | value.rlike(_BLANK_TEXT)


def check_texts(frame: DataFrame, column: str, path: Path, skip_empty: bool) -> int:
    """One Spark pass counting the rows and the refused texts; only on failure, the local engine's message.

    Returns the rows.

    A file is then read by ``data.read_texts``, so the error names the same lines as
    ``--engine local``; a folder of Parquet files names its rows, counted in file order.
    """
    from pyspark.sql import functions as F

    rows, refused = frame.agg(F.count(F.lit(1)), F.sum(_refused_text(frame, column, skip_empty).cast("long"))).first()
    if rows == 0:
        raise data.empty_file_error(path)
    if not refused:
        return rows
    if path.is_file():
        data.read_texts(path, column, skip_empty=skip_empty)  # raises the local engine's error
    bad = (
        frame.select(f"`{column}`")
        .rdd.zipWithIndex()
        .filter(lambda pair: texts.problems([pair[0][0]], max_chars=texts.DEFAULT_MAX_CHARS).refused(skip_empty))
        .map(lambda pair: (pair[1] + 1, pair[0][0]))
        .collect()
    )
    numbers = [number for number, _ in bad]
    data.check_texts(
        pd.Series([value for _, value in bad], index=numbers, name=column),
        str(path),
        "row",
        skip_empty,
        max_chars=texts.DEFAULT_MAX_CHARS,
    )


@contextlib.contextmanager
def scoring_progress(spark: SparkSession, rows: int, partitions: int, description: str = "predict") -> Iterator[None]:
    """Report rows scored of ``rows``, their rate and the time left while the block runs a Spark job.

    Spark tells how many of a stage's tasks are done (``statusTracker``); the stage that scores
    has one task per partition of the spread frame, ``partitions``, about ``rows / partitions``
    rows each. The project's progress lines (or bar, on a terminal) take the place of Spark's
    ``[Stage 7:> (0 + 2) / 2]``.
    """
    tracker = spark.sparkContext.statusTracker()
    finished = threading.Event()
    shown = [0]
    with console.progress(rows, description) as bar:

        def poll() -> None:
            while not finished.wait(POLL_S):
                stages = [tracker.getStageInfo(stage) for stage in tracker.getActiveStageIds()]
                scoring = [stage for stage in stages if stage is not None and stage.numTasks == partitions]
                if scoring:
                    latest = max(scoring, key=lambda stage: stage.stageId)
                    done = rows * latest.numCompletedTasks // partitions
                    if done > shown[0]:
                        bar.update(done - shown[0])
                        shown[0] = done

        watcher = threading.Thread(target=poll, name="emotion-exp-spark-progress", daemon=True)
        watcher.start()
        try:
            yield
        finally:
            finished.set()
            watcher.join()
        bar.update(rows - shown[0])  # the job ended: every row was scored


def _spread(frame: DataFrame, partitions: int) -> DataFrame:
    """``frame`` over at least ``partitions`` partitions, rows still in file order."""
    from pyspark.sql import functions as F

    if frame.rdd.getNumPartitions() >= partitions:
        return frame
    order = "__emotion_exp_row"
    return (
        frame.withColumn(order, F.monotonically_increasing_id())
        .repartitionByRange(partitions, order)
        .sortWithinPartitions(order)
        .drop(order)
    )


def score(
    df: DataFrame,
    model_uri: str,
    text_column: str = "text",
    skip_empty: bool = False,
    runtime: str = "auto",
    precision: str = "auto",
) -> DataFrame:
    """``df``'s columns plus ``label`` and one ``prob_<label>`` column per label, from ``model_uri``.

    The columns are those of ``predict --engine local``: an input column named like an output
    keeps its data as ``<name>_input``. The model's output signature gives the UDF's result
    type, so the probabilities come back as double columns. Bad texts are the caller's to
    check (``read_texts`` does); the model refuses a null text when Spark runs it. With
    ``skip_empty`` the model gives empty texts an empty label and null probabilities (its
    ``skip_empty`` param), as ``predict --skip_empty`` does. ``runtime`` and ``precision`` are the encoder
    models' (``engine.loading_config``), decided where each worker loads the model.
    """
    from pyspark.sql import functions as F
    from pyspark.sql.types import StructField, StructType

    outputs = registry.model_info(model_uri).signature
    if outputs is None or outputs.outputs is None:
        raise UserError(
            f"Model {model_uri} has no output signature; --engine spark needs one to know the prediction "
            "columns. Log the model with emotion-exp (every stage logs a signature)."
        )
    # Arrow hands the columns back as nullable, and Spark refuses a mismatch with a non-null struct.
    result_type = StructType(
        [StructField(field.name, field.dataType, nullable=True) for field in outputs.outputs.as_spark_schema()]
    )
    if text_column not in df.columns:
        data.check_columns(pd.DataFrame(columns=df.columns), "The DataFrame", {text_column: "text_column"})
    predict = mlflow.pyfunc.spark_udf(
        df.sparkSession,
        model_uri,
        result_type=result_type,
        env_manager="local",
        params={pyfunc.SKIP_EMPTY: True} if skip_empty else None,
        model_config=engine.loading_config(runtime, precision),
    )
    predicted = set(result_type.fieldNames())
    renamed = [F.col(f"`{name}`").alias(f"{name}_input" if name in predicted else name) for name in df.columns]
    scored = df.withColumn(_PREDICTION, predict(F.struct(F.col(f"`{text_column}`").alias("text"))))
    return scored.select(*renamed, *(F.col(f"{_PREDICTION}.`{name}`").alias(name) for name in result_type.fieldNames()))


def output_folder(source: str, output: str, overwrite: bool = False) -> Path:
    """Where ``--engine spark`` writes: ``--output``, or beside the input as ``<name>.predictions.parquet``.

    Refused as the local engine refuses them: a symbolic link, the input itself, and an existing
    path unless ``overwrite``; even then only a Parquet folder Spark completed (it holds
    ``_SUCCESS``) or a file is replaced, never another folder.
    """
    source_path = Path(source).expanduser()
    stem = source_path.name if source_path.is_dir() else source_path.stem
    target = Path(output).expanduser() if output else source_path.with_name(f"{stem}.predictions.parquet")
    shown = output or str(target)
    if target.is_symlink():
        raise UserError(
            f"--output {shown!r} is a symbolic link; predict does not write through links: pass the real path."
        )
    if target.exists() and source_path.exists() and os.path.samefile(target, source_path):
        raise UserError(f"--output {shown!r} is the input; predict never overwrites its input: pick another name.")
    if target.exists() and not overwrite:
        raise UserError(f"--output {shown!r} already exists; pass --overwrite to replace it, or pick another name.")
    if target.is_dir() and not (target / "_SUCCESS").exists():
        raise UserError(
            f"--output {shown!r} is a folder that is not a Parquet folder written by Spark (no _SUCCESS file); "
            "--overwrite replaces only those: remove it yourself or pick another name."
        )
    return target


def write_parquet(frame: DataFrame, target: Path) -> int:
    """Write ``frame`` as a Parquet folder at ``target`` and return its rows.

    Spark writes into a hidden folder beside ``target`` that is renamed into place once every
    part file is there, so a failed job leaves nothing at ``target`` (and an existing ``target``,
    which ``output_folder`` allowed to be replaced, as it was).
    """
    import pyarrow.parquet as pq

    target.parent.mkdir(parents=True, exist_ok=True)
    staging = target.with_name(f".{target.name}.{uuid.uuid4().hex[:8]}.partial")
    replaced = target.with_name(f".{target.name}.{uuid.uuid4().hex[:8]}.replaced")
    try:
        frame.write.parquet(str(staging))
        rows = sum(pq.ParquetFile(part).metadata.num_rows for part in staging.glob("*.parquet"))
        if target.exists():
            target.rename(replaced)
        staging.rename(target)
    finally:
        if staging.exists():
            shutil.rmtree(staging)
    if replaced.is_dir():
        shutil.rmtree(replaced)
    elif replaced.exists():
        replaced.unlink()
    return rows
