//! Human output of `switchboard ctl`: columns padded to their widest cell.

/// A table: a header row and rows of cells.
pub struct Table {
    header: Vec<String>,
    rows: Vec<Vec<String>>,
}

impl Table {
    pub fn new(header: &[&str]) -> Self {
        Table { header: header.iter().map(|h| (*h).to_owned()).collect(), rows: Vec::new() }
    }

    pub fn row(&mut self, cells: Vec<String>) {
        self.rows.push(cells);
    }

    /// The table as text, one line per row, columns two spaces apart, no trailing blanks.
    pub fn render(&self) -> String {
        let mut widths: Vec<usize> = self.header.iter().map(|h| h.chars().count()).collect();
        for r in &self.rows {
            for (i, c) in r.iter().enumerate() {
                if i < widths.len() {
                    widths[i] = widths[i].max(c.chars().count());
                }
            }
        }
        let line = |cells: &[String]| {
            let mut s = String::new();
            for (i, c) in cells.iter().enumerate() {
                if i + 1 < cells.len() {
                    s.push_str(&format!("{c:<w$}  ", w = widths[i]));
                } else {
                    s.push_str(c);
                }
            }
            s.trim_end().to_owned() + "\n"
        };
        let mut out = line(&self.header);
        for r in &self.rows {
            out.push_str(&line(r));
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn columns_line_up() {
        let mut t = Table::new(&["ID", "ROOM"]);
        t.row(vec!["1".into(), "kitchen".into()]);
        t.row(vec!["1234".into(), "".into()]);
        assert_eq!(t.render(), "ID    ROOM\n1     kitchen\n1234\n");
    }
}
