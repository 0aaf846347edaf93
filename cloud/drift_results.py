"""Writing the drift monitor's results (cloud/drift_monitor.py): built without the ORM constructor's attribute
events (`new_result`) and written in one statement per run (`insert_results`)."""

from __future__ import annotations

import json

from sqlalchemy import func, insert, select
from sqlalchemy.orm import Session
from sqlalchemy.orm.instrumentation import manager_of_class

from edgefleet.cloud.db import DriftResult

_RESULTS = manager_of_class(DriftResult)


def new_result(**values: object) -> DriftResult:
    """DriftResult(**values), without the attribute events of the ORM's constructor (a third of the cost of
    a result row): the values go straight into the new instance's state, where the COPY, an INSERT of the
    table or a session's flush reads them, as a loaded row's are. Every column but the id is given."""
    result = _RESULTS.new_instance()
    result.__dict__.update(values)
    return result


def insert_results(session: Session, results: list[DriftResult]) -> None:
    """Writes the results in one statement and sets their ids (in list order, ascending): on PostgreSQL
    one COPY with ids drawn from the table's sequence at once (an INSERT of thousands of rows spent
    most of its time in the driver's query parsing), elsewhere one INSERT ... RETURNING of all rows.
    The rows are not added to the session: they are written, and nothing in the run changes them."""
    if not results:
        return
    table = DriftResult.__table__
    columns = [c.name for c in table.columns if c.name != "id"]
    connection = session.connection()
    if connection.dialect.name == "postgresql":
        sequence = func.pg_get_serial_sequence(table.name, "id")
        ids = sorted(session.scalars(select(func.nextval(sequence))
                                     .select_from(func.generate_series(1, len(results)))))
        to_json = connection.dialect._json_serializer or json.dumps
        raw = connection.connection.driver_connection
        with raw.cursor() as cursor, cursor.copy(
                f"COPY {table.name} (id, {', '.join(columns)}) FROM STDIN") as copy:
            for row_id, result in zip(ids, results, strict=True):
                values = result.__dict__  # the state: every column is set (`new_result`)
                copy.write_row([row_id, *(to_json(values["report"]) if name == "report" else values.get(name)
                                          for name in columns)])
    else:
        rows = [{name: getattr(result, name) for name in columns} for result in results]
        ids = list(session.scalars(insert(table).returning(table.c.id, sort_by_parameter_order=True), rows))
    for row_id, result in zip(ids, results, strict=True):
        result.id = row_id
