"""Reads a montage sheet written by shotlist back with an independent reader
(openpyxl for .xlsx, python-docx for .docx) and prints what it holds as JSON
on stdout, for tests/export_formats.rs to compare with the sheet.

    read_sheet.py FILE.xlsx|FILE.docx

Every cell comes back as a string: an empty cell is "", a whole number is
its digits. The script only reads and reports; it judges nothing.
"""

import json
import sys


def cell_text(value):
    if value is None:
        return ""
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


def read_xlsx(path):
    import openpyxl

    book = openpyxl.load_workbook(path)
    sheet = book.worksheets[0]
    rows = list(sheet.iter_rows(min_row=1, max_row=sheet.max_row, max_col=6))
    # The details block ends at the first empty row; the headers follow it.
    blank = next(
        (i for i, row in enumerate(rows) if all(c.value in (None, "") for c in row)),
        None,
    )
    if blank is None:
        raise SystemExit(f"{path}: no empty row between the details and the table")
    header = rows[blank + 1]
    table = rows[blank + 2 :]
    setup = sheet.page_setup
    fit = sheet.sheet_properties.pageSetUpPr
    return {
        "sheetNames": book.sheetnames,
        "details": [[cell_text(r[0].value), cell_text(r[1].value)] for r in rows[:blank]],
        "detailLabelsBold": all(bool(r[0].font.b) for r in rows[:blank]),
        "headers": [cell_text(c.value) for c in header],
        "headerBold": all(bool(c.font.b) for c in header),
        "headerWrapped": all(bool(c.alignment.wrap_text) for c in header),
        "headerRow": blank + 2,
        "freezePane": sheet.freeze_panes,
        "printTitleRows": sheet.print_title_rows,
        "orientation": setup.orientation,
        "fitToPage": bool(fit is not None and fit.fitToPage),
        # An absent fitToWidth or fitToHeight is 1 page, as OOXML defines it.
        "fitToWidth": 1 if setup.fitToWidth is None else int(setup.fitToWidth),
        "fitToHeight": 1 if setup.fitToHeight is None else int(setup.fitToHeight),
        "rows": [[cell_text(c.value) for c in row] for row in table],
        "types": [[c.data_type for c in row] for row in table],
        "wrapped": all(bool(c.alignment.wrap_text) for row in table for c in row),
        "topAligned": all(c.alignment.vertical == "top" for row in table for c in row),
    }


def read_docx(path):
    import docx
    from docx.enum.section import WD_ORIENT

    document = docx.Document(path)
    paragraphs = [p for p in document.paragraphs if p.text != ""]
    title, detail_paragraphs = paragraphs[0], paragraphs[1:]
    details = []
    for paragraph in detail_paragraphs:
        label, _, value = paragraph.text.partition(": ")
        details.append([label, value])
    section = document.sections[0]
    tables = document.tables
    header = tables[0].rows[0].cells if tables else []
    header_runs = [run for cell in header for p in cell.paragraphs for run in p.runs]
    return {
        "title": title.text,
        "titleBold": all(bool(run.bold) for run in title.runs),
        "details": details,
        "detailLabelsBold": all(bool(p.runs[0].bold) for p in detail_paragraphs),
        "tableCount": len(tables),
        "headers": [cell.text for cell in header],
        "headerBold": bool(header_runs) and all(bool(run.bold) for run in header_runs),
        "rows": [[cell.text for cell in row.cells] for row in tables[0].rows[1:]] if tables else [],
        "orientation": "landscape" if section.orientation == WD_ORIENT.LANDSCAPE else "portrait",
        "pageWidth": section.page_width.twips,
        "pageHeight": section.page_height.twips,
    }


def main():
    if len(sys.argv) != 2:
        raise SystemExit("usage: read_sheet.py FILE.xlsx|FILE.docx")
    path = sys.argv[1]
    if path.endswith(".xlsx"):
        result = read_xlsx(path)
    elif path.endswith(".docx"):
        result = read_docx(path)
    else:
        raise SystemExit(f"{path}: expected an .xlsx or a .docx file")
    json.dump(result, sys.stdout, ensure_ascii=False)


if __name__ == "__main__":
    main()
