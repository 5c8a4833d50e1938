"""The one exception type xpmet raises for problems a user can fix; the CLI prints it without a traceback."""


class XpmetError(Exception):
    """A failure with a message that says what went wrong and what to do next."""


class BadInput(XpmetError):
    """An input file (or one row of it) that cannot be loaded; the message names file, row and column."""

    def __init__(self, path, message, row=None, column=None):
        self.path, self.row, self.column = str(path), row, column
        where = self.path
        if row is not None:
            where += f", row {row}"
        if column is not None:
            where += f", column {column}"
        super().__init__(f"{where}: {message}")
