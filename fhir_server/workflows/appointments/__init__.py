"""OPD appointments: booking without double booking, the Appointment status machine, check-in with
queue tokens (https://hl7.org/fhir/R4/appointment.html, slot.html, encounter.html). See README.md."""
