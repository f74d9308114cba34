"""Calendar providers: all provider I/O, behind one small Protocol (`base.CalendarProvider`)."""
