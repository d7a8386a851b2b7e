//! Rows bound as column arrays: every batch statement takes one PostgreSQL
//! array per column (`unnest($1::text[], $2::int8[], …)`), so a batch of any
//! size is one round trip. A statement's parameters are written as a table,
//! one line per parameter saying how a row gives its value.

use sqlx::encode::Encode;
use sqlx::postgres::PgArguments;
use sqlx::query::Query;
use sqlx::{Postgres, Type};

/// A statement being bound from `rows`, one array parameter per
/// [`column`](Columns::column) in the statement's parameter order.
pub struct Columns<'q, I> {
    query: Query<'q, Postgres, PgArguments>,
    rows: I,
}

impl<'q, I> Columns<'q, I>
where
    I: Iterator + Clone,
{
    pub fn new(sql: &'q str, rows: I) -> Self {
        Columns {
            query: sqlx::query(sql),
            rows,
        }
    }

    /// Binds the next parameter: `value` of every row, as one array.
    pub fn column<T>(self, value: impl FnMut(I::Item) -> T) -> Self
    where
        Vec<T>: 'q + Encode<'q, Postgres> + Type<Postgres>,
    {
        let array: Vec<T> = self.rows.clone().map(value).collect();
        Columns {
            query: self.query.bind(array),
            rows: self.rows,
        }
    }

    /// Binds the next parameters from rows whose columns are known only at
    /// run time (an event kind's own fields, [`crate::catalog`]): one array
    /// per value of `values`, typed by the first row. Every row must give
    /// the same types in the same order; with no rows, nothing is bound.
    pub fn values(self, mut values: impl FnMut(I::Item) -> Vec<Value<'q>>) -> Self {
        let mut columns: Vec<Column<'q>> = Vec::new();
        for row in self.rows.clone() {
            let row = values(row);
            if columns.is_empty() {
                columns = row.iter().map(Column::for_value).collect();
            }
            for (column, value) in columns.iter_mut().zip(row) {
                column.push(value);
            }
        }
        let query = columns
            .into_iter()
            .fold(self.query, |query, column| column.bind(query));
        Columns {
            query,
            rows: self.rows,
        }
    }

    /// The statement with every parameter bound.
    pub fn query(self) -> Query<'q, Postgres, PgArguments> {
        self.query
    }
}

/// One value of a row whose columns are chosen at run time, typed as the
/// statement's parameter (uint256 quantities are text the statement casts
/// to NUMERIC).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Value<'a> {
    Text(&'a str),
    OptText(Option<&'a str>),
    Bytes(&'a [u8]),
    SmallInt(i16),
}

/// The [`Value`] a field of an event body binds as.
pub trait AsValue {
    fn as_value(&self) -> Value<'_>;
}

impl AsValue for String {
    fn as_value(&self) -> Value<'_> {
        Value::Text(self)
    }
}

impl AsValue for Option<String> {
    fn as_value(&self) -> Value<'_> {
        Value::OptText(self.as_deref())
    }
}

impl AsValue for Vec<u8> {
    fn as_value(&self) -> Value<'_> {
        Value::Bytes(self)
    }
}

impl AsValue for i16 {
    fn as_value(&self) -> Value<'_> {
        Value::SmallInt(*self)
    }
}

/// A column of [`Value`]s bound as one PostgreSQL array parameter.
enum Column<'a> {
    Text(Vec<&'a str>),
    OptText(Vec<Option<&'a str>>),
    Bytes(Vec<&'a [u8]>),
    SmallInt(Vec<i16>),
}

impl<'a> Column<'a> {
    fn for_value(value: &Value<'a>) -> Self {
        match value {
            Value::Text(_) => Column::Text(Vec::new()),
            Value::OptText(_) => Column::OptText(Vec::new()),
            Value::Bytes(_) => Column::Bytes(Vec::new()),
            Value::SmallInt(_) => Column::SmallInt(Vec::new()),
        }
    }

    fn push(&mut self, value: Value<'a>) {
        match (self, value) {
            (Column::Text(c), Value::Text(v)) => c.push(v),
            (Column::OptText(c), Value::OptText(v)) => c.push(v),
            (Column::Bytes(c), Value::Bytes(v)) => c.push(v),
            (Column::SmallInt(c), Value::SmallInt(v)) => c.push(v),
            (column, value) => unreachable!(
                "rows of one statement give the same value types (the catalog generates them per kind): {} then {value:?}",
                column.type_name()
            ),
        }
    }

    fn type_name(&self) -> &'static str {
        match self {
            Column::Text(_) => "Text",
            Column::OptText(_) => "OptText",
            Column::Bytes(_) => "Bytes",
            Column::SmallInt(_) => "SmallInt",
        }
    }

    fn bind<'q>(self, query: Query<'q, Postgres, PgArguments>) -> Query<'q, Postgres, PgArguments>
    where
        'a: 'q,
    {
        match self {
            Column::Text(c) => query.bind(c),
            Column::OptText(c) => query.bind(c),
            Column::Bytes(c) => query.bind(c),
            Column::SmallInt(c) => query.bind(c),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use sqlx::Execute;

    #[test]
    fn binds_one_array_per_column_in_order() {
        let rows = [("a", 1_i64), ("b", 2)];
        let mut query = Columns::new("SELECT $1, $2", rows.iter())
            .column(|r| r.0)
            .column(|r| r.1)
            .query();
        let arguments = query.take_arguments().expect("arguments").expect("bound");
        assert_eq!(sqlx::Arguments::len(&arguments), 2);
    }

    #[test]
    fn values_become_one_typed_column_each() {
        let bodies = [
            vec![Value::Text("x"), Value::SmallInt(1), Value::OptText(None)],
            vec![
                Value::Text("y"),
                Value::SmallInt(2),
                Value::OptText(Some("z")),
            ],
        ];
        let mut query = Columns::new("SELECT $1, $2, $3", bodies.iter())
            .values(|row| row.clone())
            .query();
        let arguments = query.take_arguments().expect("arguments").expect("bound");
        assert_eq!(sqlx::Arguments::len(&arguments), 3);
    }
}
